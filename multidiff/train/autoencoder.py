"""Autoencoders for latent diffusion (Rombach et al. 2022), trained by the same trainer.

With ``objective.kind: autoencoder`` the trainer's per-sample loss is :class:`AutoencoderLoss`
instead of the denoising loss, so checkpoints, EMA, resume, NaN handling, logging and multi-GPU
training are the diffusion trainer's. A model for it is any module with diffusers' autoencoder
interface: ``encode(x).latent_dist`` (a diagonal Gaussian with ``mean`` / ``std`` / ``var`` /
``logvar``) and ``decode(z).sample`` (diffusers' AutoencoderOobleck and AutoencoderKL, and
multidiff.video's per-frame wrapper).

What depends on the signal comes from the modality (multidiff.train.modality): an extra
reconstruction term (audio: a multi-resolution STFT loss) and, for adversarial training
(``objective.autoencoder.adversarial_weight`` > 0), the discriminator (audio: a multi-scale
complex-STFT discriminator as in EnCodec). The discriminator is attached to the autoencoder as its
``discriminator`` submodule, so it is checkpointed, resumed and optimised with it. One loss drives
both players: the generator's hinge and feature-matching terms see the discriminator through
detached weights, the discriminator's hinge term sees a detached reconstruction, so each gradient
reaches only its own player (a simultaneous step, as with two optimisers of the same settings).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.objectives import masked_mean
from ..core.utils import Generator, randn_like


def gaussian_kl(posterior) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of a diagonal Gaussian, per sample, averaged over latent elements:
    (batch,). (diffusers' own ``kl()`` sums channels and averages the batch away.)"""
    kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - posterior.logvar.float() - 1.0)
    return kl.flatten(1).mean(1)


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
    (reparameterised with per-sample generators) plus ``kl_weight`` x KL to N(0, I). A model with a
    ``reconstruct_with_loss(z, x0, mask) -> (reconstruction, (batch,) loss)`` method decodes through
    it and adds its own term (the mel vocoder's magnitude loss on its STFT head).

    Reconstruction: ``l1_weight`` x |x - x_hat| + ``l2_weight`` x (x - x_hat)^2 (masked means over
    the data's loss mask, e.g. audio padding) + ``extra(x_hat, x, mask)``, the modality's own term
    (its ``autoencoder_loss`` hook). With ``adversarial_weight`` > 0 (the model has a
    ``discriminator``) also ``adversarial_weight`` x (generator hinge + ``feature_matching_weight``
    x feature matching) + the discriminator's hinge loss (:func:`adversarial_terms`).
    """

    def __init__(self, kl_weight: float = 1e-4, l1_weight: float = 1.0, l2_weight: float = 0.0,
                 extra: Callable[..., torch.Tensor] | None = None, adversarial_weight: float = 0.0,
                 feature_matching_weight: float = 2.0):
        self.kl_weight, self.l1_weight, self.l2_weight, self.extra = kl_weight, l1_weight, l2_weight, extra
        self.adversarial_weight, self.feature_matching_weight = adversarial_weight, feature_matching_weight

    def reconstruct(self, model, x0: torch.Tensor, generator: Generator = None, mask: torch.Tensor | None = None):
        """(reconstruction, posterior, the model's own loss term or None) of x0 through a posterior
        sample; a model with ``reconstruct_with_loss`` decodes through it (one pass for both)."""
        posterior = model.encode(x0).latent_dist
        z = posterior.mean + posterior.std * randn_like(posterior.mean, generator)
        inner = getattr(model, "module", model)
        if hasattr(inner, "reconstruct_with_loss"):
            recon, own = inner.reconstruct_with_loss(z, x0, mask)
            return recon, posterior, own
        return model.decode(z).sample, posterior, None

    def __call__(self, model, x0: torch.Tensor, cond: Mapping[str, Any] | None = None, generator: Generator = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        recon, posterior, own = self.reconstruct(model, x0, generator, mask)
        if recon.shape != x0.shape:
            raise ValueError(f"the autoencoder returned {tuple(recon.shape)} for input {tuple(x0.shape)}: the input "
                             f"length must be a multiple of its total down-sampling")
        err = recon.float() - x0.float()
        loss = self.kl_weight * gaussian_kl(posterior) if self.kl_weight else err.new_zeros(err.shape[0])
        if self.l1_weight:
            loss = loss + self.l1_weight * masked_mean(err.abs(), mask)
        if self.l2_weight:
            loss = loss + self.l2_weight * masked_mean(err ** 2, mask)
        if self.extra is not None:
            loss = loss + self.extra(recon, x0, mask)
        if own is not None:
            loss = loss + own
        if self.adversarial_weight:
            discriminator = getattr(getattr(model, "module", model), "discriminator", None)
            if discriminator is None:
                raise ValueError("objective.autoencoder.adversarial_weight > 0 needs the model's discriminator "
                                 "(build it with multidiff.train.build.build_model, which attaches one)")
            gen, matching, disc = adversarial_terms(discriminator, x0, recon)
            loss = loss + self.adversarial_weight * (gen + self.feature_matching_weight * matching) + disc
        return loss
