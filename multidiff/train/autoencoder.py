"""Autoencoders for latent diffusion (Rombach et al. 2022), trained by the same trainer.

With ``objective.kind: autoencoder`` the trainer's per-sample loss is :class:`AutoencoderLoss`
instead of the denoising loss, so checkpoints, EMA, resume, NaN handling, logging and multi-GPU
training are the diffusion trainer's. A model for it is any module with diffusers' autoencoder
interface: ``encode(x).latent_dist`` (a diagonal Gaussian with ``mean`` / ``std`` / ``var`` /
``logvar``) and ``decode(z).sample`` (diffusers' AutoencoderOobleck and AutoencoderKL, and
multidiff.video's per-frame wrapper).

Optional adversarial training for audio (``objective.autoencoder.adversarial_weight`` > 0): a
multi-scale complex-STFT discriminator (:class:`STFTDiscriminator`, as in EnCodec, Defossez et
al. 2022, Sec. 3.4) is attached to the autoencoder as its ``discriminator`` submodule, so it is
checkpointed, resumed and optimised with it. One loss drives both players: the generator's
hinge and feature-matching terms see the discriminator through detached weights, the
discriminator's hinge term sees a detached reconstruction, so each gradient reaches only its
own player (a simultaneous step, as with two optimisers of the same settings).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


class STFTDiscriminator(nn.Module):
    """Multi-scale complex-STFT discriminator (EnCodec, Defossez et al. 2022, Sec. 3.4): per FFT
    size, the real and imaginary STFT of each audio channel -> 2D convolutions strided along
    frequency -> a map of logits. forward(x (batch, channels, samples)) -> (logits, features):
    one (batch, frames', bins') logit map and a list of feature maps per scale."""

    def __init__(self, audio_channels: int = 1, fft_sizes: Sequence[int] = (512, 1024, 2048), channels: int = 32,
                 layers: int = 3):
        super().__init__()
        self.fft_sizes = tuple(int(n) for n in fft_sizes)
        self.scales = nn.ModuleList()
        for _ in self.fft_sizes:
            convs, c = [nn.Conv2d(2 * audio_channels, channels, (3, 9), padding=(1, 4))], channels
            for k in range(layers):
                convs.append(nn.Conv2d(c, channels, (3, 9), stride=(1, 2), dilation=(2 ** k, 1), padding=(2 ** k, 4)))
            convs.append(nn.Conv2d(c, channels, 3, padding=1))
            self.scales.append(nn.ModuleList([*[nn.utils.parametrizations.weight_norm(m) for m in convs],
                                              nn.Conv2d(channels, 1, 3, padding=1)]))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        b, c, t = x.shape
        logits, features = [], []
        for n_fft, convs in zip(self.fft_sizes, self.scales):
            spec = torch.stft(x.reshape(b * c, t).float(), n_fft, n_fft // 4, window=torch.hann_window(n_fft, device=x.device),
                              return_complex=True)  # (b c, bins, frames)
            h = torch.view_as_real(spec).reshape(b, c, *spec.shape[1:], 2).permute(0, 1, 4, 3, 2)
            h = h.reshape(b, 2 * c, spec.shape[2], spec.shape[1])  # (batch, 2 channels, frames, bins)
            feats = []
            for conv in convs[:-1]:
                h = F.leaky_relu(conv(h), 0.2)
                feats.append(h)
            logits.append(convs[-1](h).squeeze(1))
            features.append(feats)
        return logits, features


def adversarial_terms(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(generator hinge, feature matching, discriminator hinge), each (batch,), averaged over scales.

    Generator: mean relu(1 - D(fake)) (Lim & Ye 2017) and the L1 distance of D's features of fake
    to those of real, relative to the real features' mean magnitude (EnCodec Eq. 2), computed
    through detached discriminator weights. Discriminator: mean relu(1 - D(real)) + relu(1 + D(fake))
    on the detached fake."""
    frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
    fake_logits, fake_feats = torch.func.functional_call(discriminator, frozen, (fake,))
    real_logits, real_feats = discriminator(real)  # one pass: its logits train D, its features (detached) are targets
    real_feats = [[f.detach() for f in fs] for fs in real_feats]
    gen = torch.stack([F.relu(1 - lg).flatten(1).mean(1) for lg in fake_logits]).mean(0)
    matching = torch.stack([torch.stack([(f - r).abs().flatten(1).mean(1) / r.abs().flatten(1).mean(1).clamp(min=1e-8)
                                         for f, r in zip(fs, rs)]).mean(0)
                            for fs, rs in zip(fake_feats, real_feats)]).mean(0)
    detached_logits, _ = discriminator(fake.detach())
    disc = torch.stack([F.relu(1 - r).flatten(1).mean(1) + F.relu(1 + f).flatten(1).mean(1)
                        for r, f in zip(real_logits, detached_logits)]).mean(0)
    return gen, matching, disc


class AutoencoderLoss:
    """loss(model, x0, cond, generator, mask=None) -> (batch,): reconstruction of a posterior sample
    (reparameterised with per-sample generators) plus ``kl_weight`` x KL to N(0, I).

    Reconstruction: ``l1_weight`` x |x - x_hat| + ``l2_weight`` x (x - x_hat)^2 (masked means over
    the data's loss mask, e.g. audio padding) + ``stft_weight`` x multi-resolution STFT loss over
    the last axis (audio; off for video / images). With ``adversarial_weight`` > 0 (the model has
    a ``discriminator``, see :func:`attach_discriminator`) also ``adversarial_weight`` x (generator
    hinge + ``feature_matching_weight`` x feature matching) + the discriminator's hinge loss
    (:func:`adversarial_terms`).
    """

    def __init__(self, kl_weight: float = 1e-4, l1_weight: float = 1.0, l2_weight: float = 0.0,
                 stft_weight: float = 1.0, stft_sizes: Sequence[int] = (512, 1024, 2048),
                 adversarial_weight: float = 0.0, feature_matching_weight: float = 2.0):
        self.kl_weight, self.l1_weight, self.l2_weight = kl_weight, l1_weight, l2_weight
        self.stft_weight, self.stft_sizes = stft_weight, tuple(stft_sizes)
        self.adversarial_weight, self.feature_matching_weight = adversarial_weight, feature_matching_weight

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
        if self.adversarial_weight:
            discriminator = getattr(getattr(model, "module", model), "discriminator", None)
            if discriminator is None:
                raise ValueError("objective.autoencoder.adversarial_weight > 0 needs the model's discriminator "
                                 "(build it with multidiff.train.build.build_model, which attaches one)")
            gen, matching, disc = adversarial_terms(discriminator, x0, recon)
            loss = loss + self.adversarial_weight * (gen + self.feature_matching_weight * matching) + disc
        return loss


def attach_discriminator(model: nn.Module, audio_channels: int, fft_sizes: Sequence[int], channels: int = 32) -> nn.Module:
    """Give an audio autoencoder its adversarial ``discriminator`` submodule; returns the model."""
    model.discriminator = STFTDiscriminator(audio_channels, fft_sizes, channels)
    return model
