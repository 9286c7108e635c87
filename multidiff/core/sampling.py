"""``sample``: the one entry point that dispatches to SAMPLERS, with masks and progress."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .masked import KnownValueDenoiser, check_mask, sample_repaint
from .samplers import SAMPLERS, sigma_list


def get_sampler(method: str) -> Callable:
    try:
        return SAMPLERS[method]
    except KeyError:
        raise ValueError(f"unknown sampler {method!r}; known: {sorted(SAMPLERS)}") from None


def sample(denoiser, x: torch.Tensor, sigmas, method: str = "dpmpp_2m", *,
           cond: Mapping[str, Any] | None = None, generator=None, callback=None,
           progress: bool = False, resample: int = 1, **opts) -> torch.Tensor:
    """Run ``method`` from x at sigmas[0] down to sigma = 0.

    x: (batch, ...) already scaled to sigmas[0] (e.g. noise * sigmas[0]).
    cond: conditioning mapping. The keys ``known`` and ``mask`` (1 = known) switch on
    masked sampling: known values are re-imposed at each noise level, and with
    ``resample > 1`` RePaint resampling is used (DDIM eta = 1 steps).
    progress: show a tqdm bar over steps.
    """
    fn = get_sampler(method)
    sigma_list(sigmas)  # a bad grid is named before anything runs
    cond = dict(cond) if cond is not None else None
    known = mask = None
    if cond is not None and ("mask" in cond or "known" in cond):
        known, mask = cond.pop("known", None), cond.pop("mask", None)
        mask = check_mask(x, known, mask)
        cond = cond or None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sigmas) - 1, desc=f"sampling ({method})", leave=False)
        user_callback = callback

        def callback(info):
            bar.update(1)
            bar.set_postfix(sigma=f"{info['sigma']:.3g}")
            if user_callback is not None:
                user_callback(info)

    try:
        if mask is not None and resample > 1:
            return sample_repaint(denoiser, x, sigmas, known=known, mask=mask, cond=cond,
                                  generator=generator, callback=callback, resample=resample)
        if mask is not None:
            denoiser = KnownValueDenoiser(denoiser, known, mask, generator)
        out = fn(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, **opts)
        return torch.lerp(out, known, mask) if mask is not None else out
    finally:
        if bar is not None:
            bar.close()
