"""diffusers interop: drive any diffusers ``SchedulerMixin`` with our denoiser contract, and turn
a diffusers scheduler config into one of our schedules.

diffusers schedulers step in their own space (x_t = alpha_t x0 + sigma_t n for VP
schedulers, sigma-space for Euler-type ones, flow time for flow-matching ones) and
expect the model output in their ``prediction_type``; ``sample_with_diffusers_scheduler``
converts our denoiser's x0 estimate into that output at each step. The EDM-preconditioned
schedulers (EDMEuler, EDMDPMSolverMultistep, CosineDPMSolverMultistep: the ones with
``precondition_outputs``) step in sigma space and expect the preconditioned network
output F, with x0 = c_skip x + c_out F (c_out < 0 for their ``v_prediction``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .schedules import EDM, NoiseSchedule, RectifiedFlow, VPDiscrete


def schedule_from_diffusers(config: Mapping[str, Any]) -> NoiseSchedule:
    """Our schedule for a diffusers scheduler config (a dict or ``scheduler.config``)."""
    config = dict(config)
    cls = config.get("_class_name", "")
    if "sigma_data" in config and "beta_schedule" not in config:  # EDM-preconditioned schedulers
        # CosineDPMSolverMultistep: named in saved configs; an instance's config only shows it as
        # the one with solver_order but no algorithm_type (EDMDPMSolverMultistep has both)
        if cls.startswith("Cosine") or (not cls and "solver_order" in config and "algorithm_type" not in config):
            raise ValueError("CosineDPMSolverMultistepScheduler conditions its model on atan(sigma) * 2 / pi, "
                             "which no schedule here provides; sample_with_diffusers_scheduler still drives it")
        return EDM(sigma_min=float(config.get("sigma_min", 0.002)), sigma_max=float(config.get("sigma_max", 80.0)),
                   sigma_data=float(config["sigma_data"]))
    if "FlowMatch" in cls or config.get("use_flow_sigmas") or "shift" in config and "beta_schedule" not in config:
        return RectifiedFlow(shift=float(config.get("shift", config.get("flow_shift", 1.0)) or 1.0))
    if config.get("trained_betas") is not None:
        raise ValueError("diffusers config with trained_betas is not supported; pass beta_schedule instead")
    return VPDiscrete(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_schedule=config.get("beta_schedule", "linear"),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        rescale_zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)),
    )


#: Largest sigma handed to the denoiser. A scheduler step at zero SNR (flow time t = 1, or
#: abar = 0 with rescaled betas) has sigma = inf, which sigma space cannot hold; the
#: denoiser then gets x_t / alpha at this sigma instead (alpha ~ 1e-8: the same x_t, and a
#: model time within 1e-8 of the end of the schedule).
SIGMA_CAP = 1e8
_INF = float("inf")


def _vp_sigma_at_timestep(scheduler, t: float) -> float:
    """Sigma-space level of a (possibly fractional) training timestep of a VP scheduler:
    abar at integer t, log-sigma interpolation in between (the inverse of diffusers'
    ``_sigma_to_t``, as our VPDiscrete)."""
    abar = scheduler.alphas_cumprod.to(torch.float64)
    lo = min(max(math.floor(t), 0), len(abar) - 1)
    w = t - lo

    def sigma(k):
        a = float(abar[k])
        return math.sqrt((1 - a) / a) if a > 0 else _INF

    if w <= 0 or lo + 1 >= len(abar):
        return sigma(lo)
    s_lo, s_hi = sigma(lo), sigma(lo + 1)
    if s_hi == _INF:
        return _INF
    return math.exp((1 - w) * math.log(s_lo) + w * math.log(s_hi))


def _model_noise_level(scheduler, t: torch.Tensor, step_index: int) -> tuple[float, float, float, str]:
    """(sigma, alpha_t, sigma_t, path) of the noise level the scheduler's raw model is asked about.

    The model input is x_t = alpha_t x0 + sigma_t n (after ``scale_model_input``) and the
    model is given the timestep t. For flow-matching schedulers t is the flow time
    (alpha_t = 1 - t, sigma_t = t, read from ``scheduler.sigmas``). For the others the
    level is that of the timestep t in ``alphas_cumprod`` (so a scheduler that rounds its
    timesteps, e.g. DPMSolverMultistep with Karras sigmas, is reproduced as its raw model
    sees it), or ``scheduler.sigmas`` when its timesteps are not training indices.
    """
    index = getattr(scheduler, "step_index", None)
    index = step_index if index is None else index
    sigmas = getattr(scheduler, "sigmas", None)
    config = scheduler.config
    if sigmas is not None and ("FlowMatch" in type(scheduler).__name__ or config.get("use_flow_sigmas")):
        tf = float(sigmas[index])  # flow time in [0, 1]
        return (tf / (1 - tf) if tf < 1 else _INF), 1 - tf, tf, "flow"
    if hasattr(scheduler, "alphas_cumprod") and config.get("timestep_type", "discrete") == "discrete":
        sigma = _vp_sigma_at_timestep(scheduler, float(t))
    else:
        sigma = float(sigmas[index])
    if sigma == _INF:
        return sigma, 0.0, 1.0, "vp"
    alpha_t = (1 + sigma**2) ** -0.5
    return sigma, alpha_t, sigma * alpha_t, "vp"


def _edm_output_scalings(scheduler, sigma) -> tuple[float, float]:
    """(c_skip, c_out) of an EDM-preconditioned scheduler at sigma: its ``precondition_outputs``
    is c_skip * sample + c_out * model_output, so it is read off at (1, 0) and (0, 1). This
    takes the scheduler's own sigma_data, prediction_type (c_out < 0 for v_prediction) and
    rounding, and raises where the scheduler does (an unsupported prediction_type)."""
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    c_skip = float(scheduler.precondition_outputs(one, zero, sigma))
    c_out = float(scheduler.precondition_outputs(zero, one, sigma))
    return c_skip, c_out


@torch.no_grad()
def sample_with_diffusers_scheduler(denoiser, noise: torch.Tensor, scheduler, num_inference_steps: int, *,
                                    cond: Mapping[str, Any] | None = None, generator=None) -> torch.Tensor:
    """Generate with a diffusers scheduler stepping and our denoiser predicting.

    noise: standard normal (batch, ...); it is scaled by the scheduler's
    ``init_noise_sigma``, as diffusers' pipelines do. Returns the final sample (sigma 0 /
    data space). At each step the scheduler's model input x_t (``scale_model_input``) is
    handed to the denoiser in sigma space, x_t / alpha_t at sigma_t / alpha_t, and its x0
    estimate is turned into the scheduler's ``prediction_type`` (epsilon, sample,
    v_prediction, flow_prediction; flow-matching schedulers get the velocity n - x0) with
    the same alpha_t, sigma_t. EDM-preconditioned schedulers (those with
    ``precondition_outputs``) keep their sample in sigma space and are handed the network
    output F = (x0 - c_skip x) / c_out, with their own c_skip, c_out (``_edm_output_scalings``).
    For a ``Denoiser`` over the scheduler's schedule (``schedule_from_diffusers``) the
    result therefore equals the scheduler's own loop with the raw model.
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    flow = "FlowMatch" in type(scheduler).__name__
    edm = callable(getattr(scheduler, "precondition_outputs", None))
    prediction = scheduler.config.get("prediction_type", "flow_prediction" if flow else "epsilon")
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    step_kwargs = {"generator": generator} if generator is not None else {}
    for i, t in enumerate(scheduler.timesteps):
        x_t = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        if edm:  # x is in sigma space; the model would see c_in x and c_noise
            index = scheduler.step_index if scheduler.step_index is not None else i
            sigma_t = scheduler.sigmas[index]
            sig = torch.full((x.shape[0],), float(sigma_t), dtype=x.dtype, device=x.device)
            x0 = denoiser(x, sig, cond).to(x.dtype)
            c_skip, c_out = _edm_output_scalings(scheduler, sigma_t)
            x = scheduler.step((x0 - x * c_skip) / c_out, t, x, **step_kwargs).prev_sample
            continue
        sigma, alpha_t, sigma_t, path = _model_noise_level(scheduler, t, i)
        sigma_in = min(sigma, SIGMA_CAP)
        x_sigma = x_t * (1 + sigma_in) if path == "flow" else x_t * (1 + sigma_in**2) ** 0.5  # x_t / alpha
        sig = torch.full((x.shape[0],), sigma_in, dtype=x.dtype, device=x.device)
        x0 = denoiser(x_sigma, sig, cond).to(x.dtype)
        # the raw model's output, from x_t (not x_sigma) so that sigma = inf stays exact
        eps = (x_t - x0 * alpha_t) / sigma_t
        if prediction == "flow_prediction":
            out = eps - x0  # flow-matching velocity dx_t/dt for x_t = (1 - t) x0 + t n
        elif prediction == "epsilon":
            out = eps
        elif prediction == "sample":
            out = x0
        elif prediction == "v_prediction":
            out = eps * alpha_t - x0 * sigma_t
        else:
            raise ValueError(f"unsupported diffusers prediction_type {prediction!r}")
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x
