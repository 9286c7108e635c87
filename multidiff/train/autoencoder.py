"""Autoencoders for latent diffusion (Rombach et al. 2022), trained by the same trainer.

With ``objective.kind: autoencoder`` the trainer's per-sample loss is :class:`AutoencoderLoss`
instead of the denoising loss, so checkpoints, EMA, resume, NaN handling, logging and multi-GPU
training are the diffusion trainer's. A model for it is any module with diffusers' autoencoder
interface: ``encode(x).latent_dist`` (a diagonal Gaussian with ``mean`` / ``std`` / ``var`` /
``logvar``) and ``decode(z).sample`` (diffusers' AutoencoderOobleck and AutoencoderKL, and
multidiff.video's per-frame wrapper).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.objectives import masked_mean
from ..core.utils import Generator, randn_like


def stft_loss(estimate: torch.Tensor, reference: torch.Tensor, fft_sizes: Sequence[int] = (512, 1024, 2048),
              eps: float = 1e-5, silence_rms: float = 1e-3) -> torch.Tensor:
    """Multi-resolution STFT loss (Yamamoto et al. 2020, Eqs. 4-6): per resolution, spectral
    convergence plus L1 of log magnitudes, averaged over resolutions. (batch, ..., samples) ->
    (batch,), differentiable, on the inputs' device. Resolutions longer than the signal are skipped.

    Spectral convergence divides by the reference's spectral norm, which is 0 for a silent crop;
    the norm is floored at that of white noise of rms ``silence_rms`` (-60 dBFS), so silence
    costs about 1 per unit of estimate at that level instead of dividing by ``eps``."""
    est = estimate.reshape(-1, estimate.shape[-1]).float()
    ref = reference.reshape(-1, reference.shape[-1]).float()
    batch = estimate.shape[0]
    sizes = [n for n in fft_sizes if n <= est.shape[-1]] or [est.shape[-1]]
    total = est.new_zeros(batch)
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=est.device)
        kw = dict(n_fft=n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
        e = torch.stft(est, **kw).abs().reshape(batch, -1)
        r = torch.stft(ref, **kw).abs().reshape(batch, -1)
        # white noise of rms a has E|X|^2 = a^2 sum(window^2) per bin
        floor = silence_rms * math.sqrt(float(window.square().sum()) * r.shape[1])
        convergence = torch.linalg.norm(r - e, dim=1) / torch.linalg.norm(r, dim=1).clamp(min=max(floor, eps))
        log_mag = (torch.log(r + eps) - torch.log(e + eps)).abs().mean(1)
        total = total + convergence + log_mag
    return total / len(sizes)


def gaussian_kl(posterior) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of a diagonal Gaussian, per sample, averaged over latent elements:
    (batch,). (diffusers' own ``kl()`` sums channels and averages the batch away.)"""
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - posterior.logvar.float() - 1.0)
    return kl.flatten(1).mean(1)


class AutoencoderLoss:
    """loss(model, x0, cond, generator, mask=None) -> (batch,): reconstruction of a posterior sample
    (reparameterised with per-sample generators) plus ``kl_weight`` x KL to N(0, I).

    Reconstruction: ``l1_weight`` x |x - x_hat| + ``l2_weight`` x (x - x_hat)^2 (masked means over
    the data's loss mask, e.g. audio padding) + ``stft_weight`` x multi-resolution STFT loss over
    the last axis (audio; off for video / images).
    """

    def __init__(self, kl_weight: float = 1e-4, l1_weight: float = 1.0, l2_weight: float = 0.0,
                 stft_weight: float = 1.0, stft_sizes: Sequence[int] = (512, 1024, 2048)):
        self.kl_weight, self.l1_weight, self.l2_weight = kl_weight, l1_weight, l2_weight
        self.stft_weight, self.stft_sizes = stft_weight, tuple(stft_sizes)

    def reconstruct(self, model, x0: torch.Tensor, generator: Generator = None):
        """(reconstruction, posterior) of x0 through a posterior sample."""
        posterior = model.encode(x0).latent_dist
        z = posterior.mean + posterior.std * randn_like(posterior.mean, generator)
        return model.decode(z).sample, posterior

    def __call__(self, model, x0: torch.Tensor, cond: Mapping[str, Any] | None = None, generator: Generator = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        recon, posterior = self.reconstruct(model, x0, generator)
        if recon.shape != x0.shape:
            raise ValueError(f"the autoencoder returned {tuple(recon.shape)} for input {tuple(x0.shape)}: the input "
                             f"length must be a multiple of its total down-sampling")
        err = recon.float() - x0.float()
        loss = self.kl_weight * gaussian_kl(posterior)
        if self.l1_weight:
            loss = loss + self.l1_weight * masked_mean(err.abs(), mask)
        if self.l2_weight:
            loss = loss + self.l2_weight * masked_mean(err ** 2, mask)
        if self.stft_weight:
            m = 1.0 if mask is None else mask.to(recon.dtype)
            loss = loss + self.stft_weight * stft_loss(recon * m, x0 * m, self.stft_sizes)
        return loss
