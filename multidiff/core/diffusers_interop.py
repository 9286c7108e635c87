"""diffusers interop: drive any diffusers ``SchedulerMixin`` with our denoiser contract, and turn
a diffusers scheduler config into one of our schedules.

diffusers schedulers step in their own space (x_t = alpha_t x0 + sigma_t n for VP
schedulers, sigma-space for Euler-type ones, flow time for flow-matching ones) and
expect the model output in their ``prediction_type``; ``DiffusersSampler`` converts our
denoiser's x0 estimate into that output at each step.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .schedules import NoiseSchedule, RectifiedFlow, VPDiscrete
from .utils import append_dims


def schedule_from_diffusers(config: Mapping[str, Any]) -> NoiseSchedule:
    """Our schedule for a diffusers scheduler config (a dict or ``scheduler.config``)."""
    config = dict(config)
    cls = config.get("_class_name", "")
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


def _scheduler_sigma(scheduler, t: torch.Tensor, step_index: int) -> tuple[float, str]:
    """Sigma-space level of the scheduler's current timestep, and the space it steps in."""
    if hasattr(scheduler, "sigmas") and "FlowMatch" in type(scheduler).__name__:
        tf = float(scheduler.sigmas[step_index])  # flow time in [0, 1]
        return tf / (1 - tf) if tf < 1 else float("inf"), "flow"
    if hasattr(scheduler, "init_noise_sigma") and hasattr(scheduler, "sigmas") and \
            type(scheduler).__name__.startswith(("Euler", "Heun", "KDPM", "LMS")):
        return float(scheduler.sigmas[scheduler.step_index if scheduler.step_index is not None else step_index]), "sigma"
    abar = float(scheduler.alphas_cumprod[int(t)])
    return ((1 - abar) / abar) ** 0.5, "vp"


@torch.no_grad()
def sample_with_diffusers_scheduler(denoiser, noise: torch.Tensor, scheduler, num_inference_steps: int, *,
                                    cond: Optional[Mapping[str, Any]] = None, generator=None) -> torch.Tensor:
    """Generate with a diffusers scheduler stepping and our denoiser predicting.

    noise: standard normal (batch, ...). Returns the final sample (sigma 0 / data space).
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    prediction = scheduler.config.get("prediction_type", "epsilon")
    x = noise * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if generator is not None else {}
    for i, t in enumerate(scheduler.timesteps):
        sigma, space = _scheduler_sigma(scheduler, t, i)
        if space == "vp":
            alpha = (1 + sigma**2) ** -0.5
            x_sigma = x / alpha
        elif space == "flow":
            alpha = 1 / (1 + sigma)
            x_sigma = x / alpha
        else:
            alpha = 1.0
            x_sigma = x
        sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        x0 = denoiser(x_sigma, sig, cond)
        eps = (x_sigma - x0) / sigma
        if space == "flow":
            out = eps - x0
        elif prediction == "epsilon":
            out = eps
        elif prediction == "sample":
            out = x0
        elif prediction == "v_prediction":
            a = (1 + sigma**2) ** -0.5  # v is defined on the VP path
            out = eps * a - x0 * (sigma * a)
        else:
            raise ValueError(f"unsupported diffusers prediction_type {prediction!r}")
        model_in = scheduler.scale_model_input(x, t)  # keeps the scheduler's internal state right
        del model_in
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x
