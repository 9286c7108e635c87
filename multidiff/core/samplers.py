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
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .utils import randn_like

Denoiser = Callable[..., torch.Tensor]


# ------------------------------------------------------------------------------- helpers
def check_sigmas(sigmas) -> torch.Tensor:
    """Validate a sigma grid: 1-D, at least two entries, strictly descending, last entry 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ValueError(f"sigmas must be finite and non-negative, got {sigmas.tolist()}")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end in 0, last value is {float(sigmas[-1])!r}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        bad = int(torch.nonzero(sigmas[1:] >= sigmas[:-1])[0])
        raise ValueError(
            f"sigmas must be strictly descending: sigmas[{bad}]={float(sigmas[bad]):.6g} "
            f"<= sigmas[{bad + 1}]={float(sigmas[bad + 1]):.6g}"
        )
    return sigmas


def _call(denoiser, x, sigma: float, cond):
    s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    return denoiser(x, s, cond)


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
    x = x + randn_like(x, generator) * s_noise * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


# ----------------------------------------------------------------------- first order / Heun
@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM Alg. 2 with churn)."""
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        x, sigma = _churn(x, s[i], len(s) - 1, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _call(denoiser, x, sigma, cond)
        _report(callback, i, x, sigma, s[i + 1], denoised)
        d = (x - denoised) / sigma
        x = x + d * (s[i + 1] - sigma)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's 2nd-order method (EDM Algorithm 1/2); the final step to sigma = 0 is Euler."""
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        x, sigma = _churn(x, s[i], len(s) - 1, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _call(denoiser, x, sigma, cond)
        _report(callback, i, x, sigma, s[i + 1], denoised)
        d = (x - denoised) / sigma
        dt = s[i + 1] - sigma
        x_euler = x + d * dt
        if s[i + 1] == 0:
            x = x_euler
            continue
        d_next = (x_euler - _call(denoiser, x_euler, s[i + 1], cond)) / s[i + 1]
        x = x + (d + d_next) * (dt / 2)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                           eta=1.0, s_noise=1.0):
    """Ancestral Euler: a deterministic step to sigma_down, then fresh noise of std sigma_up."""
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = x + (x - denoised) / s[i] * (sigma_down - s[i])
        if sigma_up > 0:
            x = x + randn_like(x, generator) * (s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, eta=0.0):
    """DDIM (Song et al. 2021, Eq. 12) written in sigma space for any noise level grid.

    Coefficients follow the VP form with abar = 1 / (1 + sigma^2); dividing the VP update
    by sqrt(abar_next) gives the sigma-space step. eta = 0 is deterministic (it equals
    Euler in sigma space); eta = 1 is DDPM's ancestral sampler with the posterior variance.
    """
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        eps = (x - denoised) / s[i]
        abar, abar_next = 1 / (1 + s[i] ** 2), 1 / (1 + s[i + 1] ** 2)
        var = eta**2 * (1 - abar_next) / (1 - abar) * (1 - abar / abar_next)
        x = denoised + eps * math.sqrt(max(1 - abar_next - var, 0.0) / abar_next)
        if var > 0:
            x = x + randn_like(x, generator) * math.sqrt(var / abar_next)
    return x


def sample_ddpm(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) = DDIM with eta = 1 (posterior variance beta~)."""
    return sample_ddim(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, eta=1.0)


# -------------------------------------------------------------------- DPM-Solver++ family
@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, first order at the first and last step."""
    s = check_sigmas(sigmas).tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        if s[i + 1] == 0:
            x = denoised
            break
        h = math.log(s[i] / s[i + 1])  # step in lambda = -log sigma
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
        x = x * (s[i + 1] / s[i]) - d * math.expm1(-h)
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, eta=0.0, s_noise=1.0):
    """DPM-Solver++(3M): multistep exponential integrator in lambda = -log sigma.

    The data prediction is extrapolated from the last three outputs; phi_2, phi_3 are the
    exponential-integrator weights (Lu et al. 2022, Sec. 3). eta > 0 gives the SDE variant
    (noise through ``generator``). The update is k-diffusion's sample_dpmpp_3m_sde (and
    diffusers' order-3 DPMSolverMultistep step); its second-difference term has half the
    weight a third-order expansion needs, so its global order is 2 (see ``ODE_ORDER``).
    """
    s = check_sigmas(sigmas).tolist()
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        if s[i + 1] == 0:
            x = denoised
            break
        h = math.log(s[i] / s[i + 1])
        h_eta = h * (eta + 1)
        x = x * math.exp(-h_eta) - denoised * math.expm1(-h_eta)
        phi_2 = -math.expm1(-h_eta) / h_eta - 1  # = (1 - e^{-h}) / h - 1, sign folded below
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = -phi_2 / h_eta - 0.5
            x = x - d1 * phi_2 - d2 * phi_3
        elif h_1 is not None:
            x = x - (denoised - d_1) / (h_1 / h) * phi_2
        if eta > 0:
            x = x + randn_like(x, generator) * (s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise)
        d_1, d_2, h_1, h_2 = denoised, d_1, h, h_1
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, Sec. 4 / App. B), midpoint or heun correction."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    s = check_sigmas(sigmas).tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        if s[i + 1] == 0:
            x = denoised
            break
        h = math.log(s[i] / s[i + 1])
        eta_h = eta * h
        x = x * (s[i + 1] / s[i] * math.exp(-eta_h)) - denoised * math.expm1(-h - eta_h)
        if old_denoised is not None:
            r = h_last / h
            if solver_type == "heun":
                coef = -math.expm1(-h - eta_h) / (-h - eta_h) + 1
            else:
                coef = -0.5 * math.expm1(-h - eta_h)
            x = x + (denoised - old_denoised) * (coef / r)
        if eta > 0:
            x = x + randn_like(x, generator) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old_denoised, h_last = denoised, h
    return x


# --------------------------------------------------------------------------------- UniPC
def _unipc_weights(hh: float, rks: list[float], order: int, bh: str = "bh2"):
    """UniPC coefficients (Zhao et al. 2023, Alg. 1-2 with B(h) variant ``bh``).

    Returns (B_h, rhos_p, rhos_c): predictor weights for the order-1 differences, and
    corrector weights (last entry multiplies the new model output's difference).
    rks are the ratios (lambda_k - lambda_0) / h of past points, oldest last.
    """
    h_phi_1 = math.expm1(hh)
    b_h = hh if bh == "bh1" else h_phi_1
    r = list(rks) + [1.0]
    rows, b = [], []
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):
        rows.append([rk ** (k - 1) for rk in r])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = torch.tensor(rows, dtype=torch.float64)
    bt = torch.tensor(b, dtype=torch.float64)
    if order == 1:
        rhos_p = []
    elif order == 2:
        rhos_p = [0.5]
    else:
        rhos_p = torch.linalg.solve(R[:-1, :-1], bt[:-1]).tolist()
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, bt).tolist()
    return b_h, rhos_p, rhos_c


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, cond=None, generator=None, callback=None,
                 order=2, bh="bh2", lower_order_final=True, corrector=True):
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor with the UniC corrector, data prediction.

    The corrector reuses the model output at the new point, so it costs no extra
    evaluation; it is skipped after the last step. With ``lower_order_final`` the order
    drops to the number of steps left, so the final step to sigma = 0 is first order.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    s = check_sigmas(sigmas).tolist()
    n = len(s) - 1
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    outputs: list[torch.Tensor] = []  # most recent last, at most ``order`` kept
    lams: list[float] = []
    x_prev, order_prev = None, 1
    for i in range(n):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        if corrector and x_prev is not None:
            # UniC: re-do the last step from x_prev with the new output included.
            h = lam[i] - lams[-1]
            rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order_prev)]
            b_h, _, rhos_c = _unipc_weights(-h, rks, order_prev, bh)
            m0 = outputs[-1]
            x = x_prev * (s[i] / s[i - 1]) - m0 * math.expm1(-h)
            for rho, k in zip(rhos_c[:-1], range(1, order_prev)):
                x = x - (outputs[-1 - k] - m0) * (b_h * rho / rks[k - 1])
            x = x - (denoised - m0) * (b_h * rhos_c[-1])
        outputs = (outputs + [denoised])[-order:]
        lams = (lams + [lam[i]])[-order:]
        this_order = min(order, n - i) if lower_order_final else order
        this_order = min(this_order, len(outputs))
        x_prev, order_prev = x, this_order
        if s[i + 1] == 0:
            x = denoised
            break
        h = lam[i + 1] - lam[i]
        rks = [(lams[-1 - k] - lams[-1]) / h for k in range(1, this_order)]
        b_h, rhos_p, _ = _unipc_weights(-h, rks, this_order, bh)
        m0 = denoised
        x = x * (s[i + 1] / s[i]) - m0 * math.expm1(-h)
        for rho, k in zip(rhos_p, range(1, this_order)):
            x = x - (outputs[-1 - k] - m0) * (b_h * rho / rks[k - 1])
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
    so flow-matching recipes read naturally.
    """
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        t, t_next = _flow_t(s[i]), _flow_t(s[i + 1])
        x_t = x / (1 + s[i])
        velocity = (x_t - denoised) / t
        x = (x_t + velocity * (t_next - t)) * (1 + s[i + 1])
    return x


@torch.no_grad()
def sample_flow_midpoint(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Explicit midpoint (2nd order) in flow time t on the flow-matching ODE dx_t/dt = v."""
    s = check_sigmas(sigmas).tolist()
    for i in range(len(s) - 1):
        denoised = _call(denoiser, x, s[i], cond)
        _report(callback, i, x, s[i], s[i + 1], denoised)
        t, t_next = _flow_t(s[i]), _flow_t(s[i + 1])
        x_t = x / (1 + s[i])
        velocity = (x_t - denoised) / t
        t_mid = (t + t_next) / 2
        x_mid = x_t + velocity * (t_mid - t)
        sigma_mid = _flow_sigma(t_mid)
        velocity_mid = (x_mid - _call(denoiser, x_mid * (1 + sigma_mid), sigma_mid, cond)) / t_mid
        x = (x_t + velocity_mid * (t_next - t)) * (1 + s[i + 1])
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


def evaluations(method: str, n_steps: int) -> int:
    """Denoiser evaluations a sampler spends on an n_steps grid ending in 0."""
    if method == "heun":
        return 2 * n_steps - 1
    if method == "flow_midpoint":
        return 2 * n_steps
    return n_steps


def steps_for_evaluations(method: str, nfe: int) -> int:
    """The largest step count whose evaluations do not exceed nfe (at least 1)."""
    n = 1
    while evaluations(method, n + 1) <= nfe:
        n += 1
    return n
