"""Modality-agnostic diffusion core: schedules, prediction wrapper, objectives, samplers,
sigma grids, guidance, masked sampling, diffusers interop. Imports no modality."""
from .denoiser import PREDICTIONS, Denoiser, edm_scalings
from .diffusers_interop import sample_with_diffusers_scheduler, schedule_from_diffusers
from .grids import SPACINGS, sigma_grid
from .guidance import Autoguidance, ClassifierFreeGuidance, cfg, rescale_guidance
from .masked import KnownValueDenoiser, sample_repaint
from .objectives import (
                         WEIGHTINGS,
                         ConsistencyLoss,
                         CosineInterpolated,
                         DiffusionLoss,
                         LogitNormal,
                         LogNormal,
                         NoiseDistribution,
                         ProgressiveDistillationLoss,
                         UniformT,
                         masked_mean,
                         weighting,
)
from .optimize import optimize_sigmas
from .samplers import ODE_ORDER, SAMPLERS, check_sigmas, evaluations, steps_for_evaluations
from .sampling import get_sampler, sample
from .schedules import (
                         EDM,
                         SCHEDULES,
                         VE,
                         NoiseSchedule,
                         RectifiedFlow,
                         ScheduleConfig,
                         VPContinuous,
                         VPDiscrete,
                         alpha_from_sigma,
                         rescale_zero_terminal_snr,
)
from .utils import append_dims, item_generator, make_generators, mix_seed, randn_like

__all__ = [
    "PREDICTIONS", "Denoiser", "edm_scalings", "sample_with_diffusers_scheduler", "schedule_from_diffusers",
    "SPACINGS", "sigma_grid", "ClassifierFreeGuidance", "Autoguidance", "cfg", "rescale_guidance", "KnownValueDenoiser",
    "sample_repaint", "WEIGHTINGS", "ConsistencyLoss", "CosineInterpolated", "DiffusionLoss", "LogitNormal", "LogNormal",
    "NoiseDistribution", "ProgressiveDistillationLoss", "UniformT", "masked_mean", "weighting", "optimize_sigmas", "ODE_ORDER", "SAMPLERS",
    "check_sigmas", "evaluations", "steps_for_evaluations", "get_sampler", "sample", "EDM", "SCHEDULES", "VE",
    "NoiseSchedule", "RectifiedFlow", "ScheduleConfig", "VPContinuous", "VPDiscrete", "alpha_from_sigma",
    "rescale_zero_terminal_snr", "append_dims", "item_generator", "make_generators", "mix_seed", "randn_like",
]
