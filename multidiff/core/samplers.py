"""Samplers: pure functions over a denoiser in sigma space (Karras et al. 2022, EDM).

Every sampler has the signature

    fn(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **opts) -> x

``x`` is the starting point at ``sigmas[0]`` (noise * sigmas[0] for generation),
``sigmas`` is 1-D, strictly descending and ends in 0, and ``denoiser(x, sigma, cond)``
returns the x0 estimate for a (batch,) tensor of sigmas. Solver state lives in local
variables only; nothing survives a call. Step coefficients are computed in float64
(Python floats) and applied in x's dtype. Stochastic samplers draw their noise through
``generator`` (one torch.Generator, or a list with one per sample so a sample does not
depend on the rest of its batch).

Updates are written as the affine combinations of x and the denoiser outputs that they are,
applied as chained ``torch.lerp`` calls: x_next = lerp(D, x, w) is the first-order exponential
integrator (Euler, DDIM, flow Euler), DPM-Solver++(2M) is lerp(lerp(D, D_old, w'), x, w), and the
multistep methods chain one lerp more per past output (``_lerp_chain``). Each lerp forms its
difference before scaling it, so no large weight multiplies a large term that later cancels, and
a step costs one tensor op per output it combines.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from .utils import randn_like

Denoiser = Callable[..., torch.Tensor]


# ------------------------------------------------------------------------------- helpers
def sigma_list(sigmas) -> list[float]:
    """The grid as Python floats after checking it: 1-D, at least two entries, finite, strictly
    descending, last entry 0 (a list, a tuple or a tensor)."""
    t = torch.as_tensor(sigmas.detach() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(t.shape)}")
    s = t.tolist()
    for v in s:
        if not 0.0 <= v < math.inf:  # also false for nan
            raise ValueError(f"sigmas must be finite and non-negative, got {s}")
    if s[-1] != 0.0:
        raise ValueError(f"sigmas must end in 0, last value is {s[-1]!r}")
    for k in range(len(s) - 1):
        if not s[k + 1] < s[k]:
            raise ValueError(f"sigmas must be strictly descending: sigmas[{k}]={s[k]:.6g} "
                             f"<= sigmas[{k + 1}]={s[k + 1]:.6g}")
    return s


def check_sigmas(sigmas) -> torch.Tensor:
    """Validate a sigma grid (see ``sigma_list``) and return it as a float64 CPU tensor (the input
    itself when it already is one, as ``torch.as_tensor`` does)."""
    s = sigma_list(sigmas)
    if type(sigmas) is torch.Tensor and sigmas.dtype == torch.float64 and sigmas.device.type == "cpu":
        return sigmas.detach() if sigmas.requires_grad else sigmas
    return torch.tensor(s, dtype=torch.float64)


def _levels(x: torch.Tensor, s) -> list:
    """The denoiser's per-sample noise levels: one (batch,) tensor per nonzero entry of s, in x's
    dtype and device."""
    return [torch.full((x.shape[0],), v, dtype=x.dtype, device=x.device) for v in s if v > 0]


def _full(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def _den(denoiser, x, sigma: torch.Tensor, cond) -> torch.Tensor:
    d = denoiser(x, sigma, cond)
    return d if d.dtype == x.dtype else d.to(x.dtype)


def _call(denoiser, x, sigma: float, cond):
    """Denoiser output at one scalar noise level (a (batch,) tensor made for this call)."""
    return _den(denoiser, x, _full(x, sigma), cond)


def _report(callback, i, x, sigma, sigma_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for an ancestral step from sigma to sigma_next (VE form)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def _churn(x, sigma, n_steps, generator, s_churn, s_tmin, s_tmax, s_noise):
    """EDM Algorithm 2 lines 5-7: raise the noise level to sigma_hat by adding fresh noise."""
    gamma = min(s_churn / n_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma == 0.0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    x = torch.add(x, randn_like(x, generator), alpha=s_noise * math.sqrt(sigma_hat**2 - sigma**2))
    return x, sigma_hat


def _lerp_chain(ratio: float, c) -> tuple | None:
    """Weights that apply x_next = lerp(D_0, x, ratio) + sum_k c[k] (D_k - D_{k+1}) as chained lerps.

    D_0 is the newest denoiser output. With the D weights summed from the oldest, the
    update is lerp(acc_0, x, ratio) where acc_K = D_K and acc_k = lerp(D_k, acc_{k+1},
    chain[k]); chain = (-c[0] / (1 - ratio), c[1] / c[0], c[2] / c[1], ...). That is one
    op per tensor, and each lerp forms its difference before scaling it. None where a
    weight would be 0/0 or huge (then ``_chain_step`` adds the differences one by one).
    """
    c = list(c)
    while c and c[-1] == 0.0:
        c.pop()
    if not c:
        return ()
    chain = [-c[0] / (1 - ratio)]
    for k in range(1, len(c)):
        if not abs(c[k]) <= 1e3 * abs(c[k - 1]):
            return None
        chain.append(c[k] / c[k - 1])
    return tuple(chain) if abs(chain[0]) <= 1e3 else None


def _chain_step(x, ratio: float, outputs, chain, c):
    """lerp(D_0, x, ratio) + sum_k c[k] (D_k - D_{k+1}) for outputs = (D_0, D_1, ...), newest first."""
    if chain is not None:
        acc = outputs[len(chain)]
        for k in range(len(chain) - 1, -1, -1):
            acc = torch.lerp(outputs[k], acc, chain[k])
        return torch.lerp(acc, x, ratio)
    x = torch.lerp(outputs[0], x, ratio)
    for k, ck in enumerate(c):
        if ck != 0.0:
            x.add_(outputs[k] - outputs[k + 1], alpha=ck)
    return x


# ----------------------------------------------------------------------- first order / Heun
@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM Alg. 2 with churn).

    One step is x + (x - D) / sigma * (sigma_next - sigma) = lerp(D, x, sigma_next / sigma).
    """
    s = sigma_list(sigmas)
    n = len(s) - 1
    levels = _levels(x, s)
    for i in range(n):
        sigma = s[i]
        if s_churn > 0:
            x, sigma = _churn(x, sigma, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _den(denoiser, x, levels[i] if sigma == s[i] else _full(x, sigma), cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": s[i + 1], "denoised": denoised})
        x = torch.lerp(denoised, x, s[i + 1] / sigma)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's 2nd-order method (EDM Algorithm 1/2); the final step to sigma = 0 is Euler.

    With d = (x - D) / sigma, x_e = x + dt d = lerp(D, x, sigma_next / sigma) and
    d' = (x_e - D') / sigma_next, the step x + dt (d + d') / 2 has weight sigma_next / sigma
    on x, and expanding x_e shows it is lerp(lerp(D, D', sigma / (2 sigma_next)), x, sigma_next / sigma).
    """
    s = sigma_list(sigmas)
    n = len(s) - 1
    levels = _levels(x, s)
    for i in range(n):
        sigma, sigma_next = s[i], s[i + 1]
        if s_churn > 0:
            x, sigma = _churn(x, sigma, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _den(denoiser, x, levels[i] if sigma == s[i] else _full(x, sigma), cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
        x_euler = torch.lerp(denoised, x, sigma_next / sigma)
        if sigma_next == 0:
            x = x_euler
            continue
        denoised_next = _den(denoiser, x_euler, levels[i + 1], cond)
        x = torch.lerp(torch.lerp(denoised, denoised_next, sigma / (2 * sigma_next)), x, sigma_next / sigma)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                           eta=1.0, s_noise=1.0):
    """Ancestral Euler: a deterministic step to sigma_down, then fresh noise of std sigma_up."""
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = torch.lerp(denoised, x, sigma_down / s[i])
        if sigma_up > 0:
            x.add_(randn_like(x, generator), alpha=s_noise * sigma_up)
    return x


def ddim_weights(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(weight on eps, std of fresh noise) of a sigma-space DDIM step (Song et al. 2021, Eq. 12):
    x_next = D + c * eps + noise_std * z, from the VP form with abar = 1 / (1 + sigma^2)
    divided by sqrt(abar_next)."""
    abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    var = eta**2 * (1 - abar_next) / (1 - abar) * (1 - abar / abar_next)
    return math.sqrt(max(1 - abar_next - var, 0.0) / abar_next), math.sqrt(var / abar_next)


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, eta=0.0):
    """DDIM (Song et al. 2021, Eq. 12) written in sigma space for any noise level grid.

    Coefficients follow the VP form with abar = 1 / (1 + sigma^2); dividing the VP update
    by sqrt(abar_next) gives the sigma-space step. eta = 0 is deterministic (it equals
    Euler in sigma space); eta = 1 is DDPM's ancestral sampler with the posterior variance.
    """
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        # x_next = D + eps * c with eps = (x - D) / sigma
        c, noise_std = ddim_weights(s[i], s[i + 1], eta)
        x = torch.lerp(denoised, x, c / s[i])
        if noise_std > 0:
            x.add_(randn_like(x, generator), alpha=noise_std)
    return x


def sample_ddpm(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) = DDIM with eta = 1 (posterior variance beta~)."""
    return sample_ddim(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, eta=1.0)


# -------------------------------------------------------------------- DPM-Solver++ family
@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, first order at the first and last step.

    With h = log(sigma / sigma_next) the step is x_next = (sigma_next / sigma) x - expm1(-h) d
    = lerp(d, x, sigma_next / sigma), and the second-order d = D (1 + 1/(2r)) - D_old / (2r)
    = lerp(D, D_old, -1/(2r)), r = h_last / h.
    """
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised
            break
        h = math.log(s[i] / s[i + 1])  # step in lambda = -log sigma
        d = denoised if old_denoised is None else torch.lerp(denoised, old_denoised, -h / (2 * h_last))
        x = torch.lerp(d, x, s[i + 1] / s[i])
        old_denoised, h_last = denoised, h
    return x


@functools.lru_cache(maxsize=64)
def _dpmpp_3m_plan(s: tuple, eta: float, s_noise: float) -> tuple:
    """Per step to a nonzero sigma: (e^{-h_eta}, lerp chain, weights on D - D_1 and D_1 - D_2, noise std).

    A pure function of the grid and the options, memoised like ``_unipc_plan``."""
    plan, h_1, h_2 = [], None, None
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            break
        h = math.log(s[i] / s[i + 1])
        h_eta = h * (eta + 1)
        phi_2 = -math.expm1(-h_eta) / h_eta - 1  # = (1 - e^{-h}) / h - 1, sign folded below
        if h_2 is not None:
            # d1_0 = (D - D_1) / r0, d1_1 = (D_1 - D_2) / r1, d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),
            # d2 = (d1_0 - d1_1) / (r0 + r1); x -= phi_2 d1 + phi_3 d2
            r0, r1 = h_1 / h, h_2 / h
            phi_3 = -phi_2 / h_eta - 0.5
            k, m = r0 / (r0 + r1), 1 / (r0 + r1)
            c = (-(phi_2 * (1 + k) + phi_3 * m) / r0, (phi_2 * k + phi_3 * m) / r1)
        elif h_1 is not None:
            c = (-phi_2 * h / h_1,)
        else:
            c = ()
        ratio = math.exp(-h_eta)  # x e^{-h_eta} - D expm1(-h_eta) = lerp(D, x, e^{-h_eta})
        noise = s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise if eta > 0 else 0.0
        plan.append((ratio, _lerp_chain(ratio, c), c, noise))
        h_1, h_2 = h, h_1
    return tuple(plan)


@torch.no_grad()
def sample_dpmpp_3m(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, eta=0.0, s_noise=1.0):
    """DPM-Solver++(3M): multistep exponential integrator in lambda = -log sigma.

    The data prediction is extrapolated from the last three outputs; phi_2, phi_3 are the
    exponential-integrator weights (Lu et al. 2022, Sec. 3). eta > 0 gives the SDE variant
    (noise through ``generator``). The update is k-diffusion's sample_dpmpp_3m_sde (and
    diffusers' order-3 DPMSolverMultistep step); its second-difference term has half the
    weight a third-order expansion needs, so its global order is 2 (see ``ODE_ORDER``).
    The divided differences are expanded into weights on D - D_1 and D_1 - D_2, worked out
    before the first evaluation, and a step is three chained lerps (``_lerp_chain``).
    """
    s = sigma_list(sigmas)
    plan = _dpmpp_3m_plan(tuple(s), float(eta), float(s_noise))
    levels = _levels(x, s)
    outputs: list = []  # D, D_1, D_2 (newest first)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised
            break
        outputs = [denoised, *outputs[:2]]
        ratio, chain, c, noise = plan[i]
        x = _chain_step(x, ratio, outputs, chain, c)
        if noise > 0:
            x.add_(randn_like(x, generator), alpha=noise)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, Sec. 4 / App. B), midpoint or heun correction.

    With E = (sigma_next / sigma) e^{-eta h} = e^{-h - eta h}, the deterministic part
    E x + (1 - E) D + c / r (D - D_old) is lerp(lerp(D, D_old, -c / (r (1 - E))), x, E).
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised
            break
        h = math.log(s[i] / s[i + 1])
        eta_h = eta * h
        one_minus_e = -math.expm1(-h - eta_h)
        d = denoised
        if old_denoised is not None:
            r = h_last / h
            if solver_type == "heun":
                coef = 1 - one_minus_e / (h + eta_h)
            else:
                coef = 0.5 * one_minus_e
            d = torch.lerp(denoised, old_denoised, -coef / (r * one_minus_e))
        x = torch.lerp(d, x, s[i + 1] / s[i] * math.exp(-eta_h))
        if eta > 0:
            x.add_(randn_like(x, generator), alpha=s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old_denoised, h_last = denoised, h
    return x


# ------------------------------------------------------------------------------ score SDE
# The forward process x = x0 + sigma n is the variance-exploding SDE dx = sqrt(d[sigma^2]/dt) dw
# (Song et al. 2021); every schedule (VP, EDM, rectified flow) is this SDE in the scaled
# coordinates of the sigma-space denoiser, up to a change of time (Karras et al. 2022, Sec. 4), so
# one sigma-space implementation serves them all. The score is (D(x, sigma) - x) / sigma^2.
def reverse_diffusion_step(x, denoised, sigma: float, sigma_next: float, noise):
    """Song et al. 2021, Eq. 47 (the reverse-diffusion predictor, VE form):
    x + (sigma^2 - sigma_next^2) score + sqrt(sigma^2 - sigma_next^2) z
    = lerp(D, x, sigma_next^2 / sigma^2) + sigma sqrt(1 - sigma_next^2 / sigma^2) z."""
    ratio = (sigma_next / sigma) ** 2
    return torch.lerp(denoised, x, ratio).add_(noise, alpha=sigma * math.sqrt(1 - ratio))


def euler_maruyama_step(x, denoised, sigma: float, sigma_next: float, noise):
    """One Euler-Maruyama step of the reverse SDE dx = -2 sigma score dsigma + sqrt(2 sigma) dw in time
    sigma (Karras et al. 2022, Eq. 6 with sigma(t) = t): with dt = sigma - sigma_next,
    x + 2 sigma dt score + sqrt(2 sigma dt) z = lerp(x, D, 2 dt / sigma) + sqrt(2 sigma dt) z."""
    dt = sigma - sigma_next
    return torch.lerp(x, denoised, 2 * dt / sigma).add_(noise, alpha=math.sqrt(2 * sigma * dt))


def langevin_step(x, denoised, sigma: float, snr: float, noise, norms: str = "expected"):
    """One Langevin corrector step at sigma with the signal-to-noise step rule (Song et al. 2021,
    Alg. 4): g = score, eps = 2 (snr |z| / |g|)^2, x + eps g + sqrt(2 eps) z.

    ``norms="expected"`` puts the norms' expectations in their place, |z| = sqrt(d) (the paper's
    advice for small batches) and |g| = sqrt(d) / sigma (the score norm of pure noise), so
    eps = 2 (snr sigma)^2 does not depend on the state and the step leaves p_sigma invariant as
    eps -> 0. ``norms="sample"`` measures both per sample (diffusers' ScoreSdeVeScheduler at batch
    size 1; the paper's code averages them over the batch, which would make a sample depend on its
    batch). A measured step is larger where |g| is small, i.e. near a mode, and that inflates the
    spread (tests/test_core_sde.py measures it)."""
    score = (denoised - x) / sigma**2
    if norms == "expected":
        step = 2 * (snr * sigma) ** 2
        return x + step * score + math.sqrt(2 * step) * noise
    flat = (x.shape[0], -1)
    step = 2 * (snr * noise.reshape(flat).norm(dim=1) / score.reshape(flat).norm(dim=1)) ** 2
    step = step.reshape(-1, *([1] * (x.ndim - 1)))
    return x + step * score + (2 * step).sqrt() * noise


PREDICTORS = {"reverse_diffusion": reverse_diffusion_step, "euler_maruyama": euler_maruyama_step}


@torch.no_grad()
def sample_sde_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, Sec. 4.1), in time sigma
    (``euler_maruyama_step``). The step to sigma = 0 is the denoiser's output (the paper's final
    noise-free denoising step). First order in the step size: it wants many steps."""
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised
            break
        x = euler_maruyama_step(x, denoised, s[i], s[i + 1], randn_like(x, generator))
    return x


@torch.no_grad()
def sample_sde_pc(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                  snr=0.16, corrector_steps=1, predictor="reverse_diffusion", norms="expected"):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 4): a predictor step from sigma_i to
    sigma_{i+1} (``reverse_diffusion`` or ``euler_maruyama``), then ``corrector_steps`` Langevin
    steps at sigma_{i+1} with the signal-to-noise rule ``snr`` (``norms``: see
    ``langevin_step``). The last predictor step lands on
    the denoiser's output at sigma = 0, where no corrector runs; a grid of n steps costs
    n + (n - 1) corrector_steps evaluations."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {sorted(PREDICTORS)}, got {predictor!r}")
    if not (corrector_steps >= 0 and int(corrector_steps) == corrector_steps):
        raise ValueError(f"corrector_steps must be a non-negative integer, got {corrector_steps!r}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr!r}")
    if norms not in ("expected", "sample"):
        raise ValueError(f"norms must be 'expected' or 'sample', got {norms!r}")
    step = PREDICTORS[predictor]
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    denoised = _den(denoiser, x, levels[0], cond)
    for i in range(len(s) - 1):
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised
            break
        x = step(x, denoised, s[i], s[i + 1], randn_like(x, generator))
        for _ in range(int(corrector_steps)):
            x = langevin_step(x, _den(denoiser, x, levels[i + 1], cond), s[i + 1], snr, randn_like(x, generator),
                              norms)
        denoised = _den(denoiser, x, levels[i + 1], cond)
    return x


# ------------------------------------------------------------------------- consistency
@torch.no_grad()
def sample_consistency(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) for a consistency model f = D: at each
    level the model maps x straight to data, and fresh noise takes it to the next level,
    x = D(x, sigma_i) + sigma_{i+1} z. One step is the grid [sigma_max, 0]; a 2-step grid puts its
    middle level where the single step errs (about 0.8 for data of unit scale, Song et al. 2023)."""
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        x = denoised if s[i + 1] == 0 else denoised + randn_like(x, generator) * s[i + 1]
    return x


# --------------------------------------------------------------------------------- UniPC
def _solve(a: list, b: list) -> list:
    """Solve a small dense system (Gaussian elimination with partial pivoting, Python floats)."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b)]
    for col in range(n):
        piv = col
        for r in range(col + 1, n):
            if abs(m[r][col]) > abs(m[piv][col]):
                piv = r
        if m[piv][col] == 0.0:
            raise ZeroDivisionError("singular UniPC system (repeated noise levels?)")
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    out = [0.0] * n
    for r in range(n - 1, -1, -1):
        acc = m[r][n]
        for c in range(r + 1, n):
            acc -= m[r][c] * out[c]
        out[r] = acc / m[r][r]
    return out


def _unipc_weights(hh: float, rks: list[float], order: int, bh: str = "bh2", which: str = "pc"):
    """UniPC coefficients (Zhao et al. 2023, Alg. 1-2 with B(h) variant ``bh``), in Python floats.

    Returns (B_h, rhos_p, rhos_c): predictor weights for the order-1 differences, and
    corrector weights (last entry multiplies the new model output's difference).
    rks are the ratios (lambda_k - lambda_0) / h of past points, oldest last.
    ``which`` ("p", "c" or "pc") says which of the two weight sets to solve for (the
    other comes back as None).
    """
    h_phi_1 = math.expm1(hh)
    b_h = hh if bh == "bh1" else h_phi_1
    b = []
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rhos_p = rhos_c = None
    if "p" in which:
        if order == 1:
            rhos_p = []
        elif order == 2:
            rhos_p = [0.5]
        else:  # [[1, 1], [r0, r1]] rho = b[:2]
            r0, r1 = rks
            rho0 = (b[1] - r1 * b[0]) / (r0 - r1)
            rhos_p = [rho0, b[0] - rho0]
    if "c" in which:
        if order == 1:
            rhos_c = [0.5]
        elif order == 2:  # [[1, 1], [r0, 1]] rho = b
            rho0 = (b[0] - b[1]) / (1 - rks[0])
            rhos_c = [rho0, b[0] - rho0]
        else:  # rows r^0, r^1, r^2 of the nodes r = rks + [1]
            r = [*rks, 1.0]
            rhos_c = _solve([[1.0] * 3, r, [rk * rk for rk in r]], b)
    return b_h, rhos_p, rhos_c


def _difference_weights(w: list[float]) -> list[float]:
    """Weights w[k-1] on (D_{j-k} - D_j), k = 1..K-1, as weights on Delta_{j-l} = D_{j-l} - D_{j-l-1}, l = 0..K-2."""
    out, acc = [], 0.0
    for wk in reversed(w):
        acc -= wk
        out.append(acc)
    return out[::-1]


@functools.lru_cache(maxsize=64)
def _unipc_plan(s: tuple, order: int, bh: str, lower_order_final: bool, corrector: bool) -> tuple:
    """Per step i (to a nonzero sigma): (sigma_{i+1} / sigma_i, lerp chain, weights on Delta_i, Delta_{i-1}, ...).

    A pure function of the grid (a tuple of floats) and the options, so it is memoised:
    sampling batch after batch on one grid works the weights out once (about 4 us a step
    in Python).

    The step is x_{i+1} = lerp(D_i, x_i, ratio) + sum_l w_l Delta_{i-l}, where x_i is the
    predicted point the model was evaluated at, Delta_j = D_j - D_{j-1}, and the weights
    hold the UniP predictor and, scaled by ratio, the UniC correction of x_i.
    """
    n = len(s) - 1
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    plan, pred_prev, order_prev = [], [], 1
    for i in range(n):
        if s[i + 1] == 0:
            break
        n_deltas = min(i, order)
        # UniC: the corrected point minus the predicted one, as weights on Delta_i, Delta_{i-1}, ...
        corr = [0.0] * n_deltas
        if corrector and i > 0:
            h = lam[i] - lam[i - 1]
            rks = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, order_prev)]
            b_h, _, rhos_c = _unipc_weights(-h, rks, order_prev, bh, "c")
            corr[0] = -b_h * rhos_c[-1]
            w = [-b_h * rho / rk for rho, rk in zip(rhos_c[:-1], rks)]
            for k, c in enumerate(_difference_weights(w)):
                corr[k + 1] += c
            for k, c in enumerate(pred_prev):
                corr[k + 1] -= c
        # UniP from the corrected point
        this_order = min(order, n - i) if lower_order_final else order
        this_order = min(this_order, i + 1)
        h = lam[i + 1] - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, this_order)]
        b_h, rhos_p, _ = _unipc_weights(-h, rks, this_order, bh, "p")
        pred = _difference_weights([-b_h * rho / rk for rho, rk in zip(rhos_p, rks)])
        ratio = s[i + 1] / s[i]
        weights = tuple(ratio * c + (pred[k] if k < len(pred) else 0.0) for k, c in enumerate(corr))
        plan.append((ratio, _lerp_chain(ratio, weights), weights))
        pred_prev, order_prev = pred, this_order
    return tuple(plan)


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 order=2, bh="bh2", lower_order_final=True, corrector=True):
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor with the UniC corrector, data prediction.

    The corrector reuses the model output at the new point, so it costs no extra
    evaluation; it is skipped after the last step. With ``lower_order_final`` the order
    drops to the number of steps left, so the final step to sigma = 0 is first order.

    Both the predictor and the corrector are lerp(D_last, x_start, sigma_next / sigma) plus
    weights on the consecutive output differences Delta_j = D_j - D_{j-1}, and they start
    from the same point with the same lerp. So the corrected point is the predicted one
    plus a combination of Deltas, and it is folded into the next predictor instead of
    being formed. All weights are worked out before the first evaluation (``_unipc_plan``),
    and a step is one lerp per output it uses, chained (``_lerp_chain``).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    s = sigma_list(sigmas)
    plan = _unipc_plan(tuple(s), order, bh, bool(lower_order_final), bool(corrector))
    levels = _levels(x, s)
    outputs: list = []  # D_i, D_{i-1}, ... (newest first, at most order + 1)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised
            break
        outputs = [denoised, *outputs[:order]]
        ratio, chain, c = plan[i]
        x = _chain_step(x, ratio, outputs, chain, c)
    return x


# ------------------------------------------------------------------------ flow matching
def _flow_t(sigma: float) -> float:
    return sigma / (1 + sigma)


def _flow_sigma(t: float) -> float:
    return t / (1 - t)


@torch.no_grad()
def sample_flow_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler in flow time t = sigma / (1 + sigma) on x_t = x / (1 + sigma) with velocity (x_t - x0) / t.

    For any grid this takes the same steps as sigma-space Euler and deterministic DDIM
    (all three are the first-order exponential integrator); it is kept under its own name
    so flow-matching recipes read naturally. In sigma space the step
    (x_t + (t_next - t) v) (1 + sigma_next) is lerp(D, x, (1 + sigma_next) / (1 + sigma) * t_next / t).
    """
    s = sigma_list(sigmas)
    levels = _levels(x, s)
    for i in range(len(s) - 1):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        t, t_next = _flow_t(s[i]), _flow_t(s[i + 1])
        x = torch.lerp(denoised, x, (1 + s[i + 1]) / (1 + s[i]) * (t_next / t))
    return x


@torch.no_grad()
def sample_flow_midpoint(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Explicit midpoint (2nd order) in flow time t on the flow-matching ODE dx_t/dt = v.

    In sigma space the half step to t_mid is x_mid = lerp(D, x, w) with w = (1 + sigma_mid) /
    (1 + sigma) * t_mid / t, and the full step (x_t + (t_next - t) v_mid) (1 + sigma_next),
    v_mid = (x_mid / (1 + sigma_mid) - D_mid) / t_mid, weighs x by a + p w, D by p (1 - w) and
    D_mid by -p (1 + sigma_mid), with a = (1 + sigma_next) / (1 + sigma) and
    p = (1 + sigma_next) (t_next - t) / (t_mid (1 + sigma_mid)); the weights sum to 1, so it is
    lerp(lerp(D, D_mid, -p (1 + sigma_mid) / (1 - a - p w)), x, a + p w).
    """
    s = sigma_list(sigmas)
    n = len(s) - 1
    levels = _levels(x, s)
    t_grid = [_flow_t(v) for v in s]
    t_mids = [(t_grid[i] + t_grid[i + 1]) / 2 for i in range(n)]
    sigma_mids = [_flow_sigma(t) for t in t_mids]
    mid_levels = _levels(x, sigma_mids)
    for i in range(n):
        denoised = _den(denoiser, x, levels[i], cond)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s[i], "sigma_next": s[i + 1], "denoised": denoised})
        t, t_next, t_mid, sigma_mid = t_grid[i], t_grid[i + 1], t_mids[i], sigma_mids[i]
        w = (1 + sigma_mid) / (1 + s[i]) * (t_mid / t)
        x_mid = torch.lerp(denoised, x, w)
        denoised_mid = _den(denoiser, x_mid, mid_levels[i], cond)
        a = (1 + s[i + 1]) / (1 + s[i])
        p = (1 + s[i + 1]) * (t_next - t) / (t_mid * (1 + sigma_mid))
        x_weight = a + p * w
        x = torch.lerp(torch.lerp(denoised, denoised_mid, -p * (1 + sigma_mid) / (1 - x_weight)), x, x_weight)
    return x


def _unipc3(denoiser, x, sigmas, **kw):
    return sample_unipc(denoiser, x, sigmas, **{"order": 3, **kw})


SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
    "unipc3": _unipc3,
    "flow_euler": sample_flow_euler,
    "flow_midpoint": sample_flow_midpoint,
    "sde_euler": sample_sde_euler,
    "sde_pc": sample_sde_pc,
    "consistency": sample_consistency,
}

#: Deterministic samplers (probability-flow ODE solvers) and their global order of accuracy
#: as implemented (a lower bound: the UniC corrector adds about one to UniPC's predictor order).
#: dpmpp_3m is 2: it reproduces k-diffusion's sample_dpmpp_3m_sde (eta = 0), which, like
#: diffusers' order-3 DPMSolverMultistep update, weights the second divided difference
#: (d2 ~ h^2 D''/2) by phi_3 where the exact integral needs h^2 D'', so one step is exact
#: for D linear in lambda but not quadratic; it is still more accurate than dpmpp_2m.
#: tests/test_core_convergence.py measures these orders.
ODE_ORDER = {"ddim": 1, "euler": 1, "flow_euler": 1, "heun": 2, "flow_midpoint": 2,
             "dpmpp_2m": 2, "dpmpp_3m": 2, "unipc": 2, "unipc3": 3}


def evaluations(method: str, n_steps: int, **opts) -> int:
    """Denoiser evaluations a sampler spends on an n_steps grid ending in 0 with options ``opts``
    (``sde_pc`` counts its corrector calls: ``corrector_steps``, default 1, at each nonzero level
    after the first)."""
    if method == "sde_pc":
        return n_steps + (n_steps - 1) * int(opts.get("corrector_steps", 1))
    if method == "heun":
        return 2 * n_steps - 1
    if method == "flow_midpoint":
        return 2 * n_steps
    return n_steps


def steps_for_evaluations(method: str, nfe: int, **opts) -> int:
    """The largest step count whose evaluations do not exceed nfe (at least 1)."""
    n = 1
    while evaluations(method, n + 1, **opts) <= nfe:
        n += 1
    return n
