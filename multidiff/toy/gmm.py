"""Isotropic Gaussian mixtures and their exact denoisers.

For p(x0) = sum_k pi_k N(mu_k, s_k^2 I), the noisy marginal at sigma is
sum_k pi_k N(mu_k, (s_k^2 + sigma^2) I) and the posterior mean is (Tweedie / Bayes)

    D(x, sigma) = sum_k w_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
    w_k(x) proportional to pi_k N(x; mu_k, (s_k^2 + sigma^2) I),

which is the exact minimiser of the denoising loss, i.e. a perfectly trained model.
"""
from __future__ import annotations

import math

import torch


class GaussianMixture(torch.nn.Module):
    """Exact sigma-space denoiser of an isotropic Gaussian mixture on (batch, dim) points.

    means: (K, dim); stds: (K,); weights: (K,) summing to 1.
    """

    def __init__(self, means, stds, weights=None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(means.shape[0]).clone()
        weights = torch.full((means.shape[0],), 1.0 / means.shape[0], dtype=torch.float64) if weights is None \
            else torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("weights", weights / weights.sum())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        x64 = x.to(torch.float64)
        s2 = sigma.to(torch.float64)[:, None] ** 2  # (B, 1)
        var = self.stds[None, :] ** 2 + s2  # (B, K)
        diff = x64[:, None, :] - self.means[None]  # (B, K, D)
        log_w = torch.log(self.weights)[None] - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        w = torch.softmax(log_w, dim=1)  # (B, K)
        shrink = (self.stds[None, :] ** 2 / var)[..., None]  # (B, K, 1)
        comp = self.means[None] + shrink * diff
        return (w[..., None] * comp).sum(1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        var = self.stds[None] ** 2
        diff = x[:, None] - self.means[None]
        lp = torch.log(self.weights)[None] - 0.5 * (diff**2).sum(-1) / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(lp, dim=1)


def two_d_mixture(n_modes: int = 8, radius: float = 1.0, std: float = 0.08) -> GaussianMixture:
    """A ring of n_modes Gaussians in 2-D plus one at the centre (a standard sampler test)."""
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    ring = torch.stack([radius * angles.cos(), radius * angles.sin()], dim=1)
    means = torch.cat([ring, torch.zeros(1, 2, dtype=torch.float64)])
    return GaussianMixture(means, torch.full((n_modes + 1,), std, dtype=torch.float64))


def gaussian_exact_solution(x_start: torch.Tensor, sigma_start: float, mean: float, std: float) -> torch.Tensor:
    """Probability-flow ODE solution at sigma = 0 for data N(mean, std^2 I) (closed form).

    dx/dsigma = (x - D)/sigma = sigma (x - mean) / (std^2 + sigma^2) gives
    x(0) = mean + (x(sigma_start) - mean) * std / sqrt(std^2 + sigma_start^2).
    """
    return mean + (x_start - mean) * (std / math.sqrt(std**2 + sigma_start**2))
