"""Noise-level and label embeddings shared by every backbone."""
from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar per sample (Vaswani et al. 2017; Ho et al. 2020, App. B).

    (batch,) -> (batch, dim). Frequencies are spread geometrically over
    [min_freq, max_freq] cycles per unit, so one embedding resolves both EDM's
    c_noise = ln(sigma)/4 (a few units wide) and timesteps 0..1000.
    """

    def __init__(self, dim: int, min_freq: float = 1e-3, max_freq: float = 10.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalEmbedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2)) * 2 * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=-1)


class FourierFeatures(nn.Module):
    """Random Fourier features of coordinates (Tancik et al. 2020): (..., d) -> (..., 2 * n)."""

    def __init__(self, in_dim: int, n_features: int, scale: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("basis", torch.randn(in_dim, n_features, generator=g) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * x.float() @ self.basis
        return torch.cat([proj.cos(), proj.sin()], dim=-1)


class NoiseLevelEmbedding(nn.Module):
    """(batch,) noise level -> (batch, dim): sinusoidal features then a 2-layer MLP."""

    def __init__(self, dim: int, features: int = 256, min_freq: float = 1e-3, max_freq: float = 10.0):
        super().__init__()
        self.features = SinusoidalEmbedding(features, min_freq, max_freq)
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))


class LabelEmbedding(nn.Module):
    """Class labels (batch,) -> (batch, dim), with an extra "null" label (index num_classes) for
    classifier-free guidance (Ho & Salimans 2022). Labels of -1 also mean null.

    ``factors`` (optional) declares a product class: label = ((i_0 * f_1 + i_1) * f_2 + i_2) ...,
    e.g. pitch x instrument; the embedding is then a sum of one table per factor, so a pitch
    learned on one instrument carries over to the others. prod(factors) must equal num_classes.

    The tables start at unit variance per coordinate (torch's nn.Embedding default), the scale a
    trained noise-level embedding reaches: started at 0.02 (DiT's init) next to that embedding, the
    labels stayed about 20 times smaller through training and the backbones learned to ignore them.
    """

    def __init__(self, num_classes: int, dim: int, factors=None):
        super().__init__()
        self.num_classes = num_classes
        self.factors = tuple(int(f) for f in factors) if factors else ()
        if self.factors:
            if math.prod(self.factors) != num_classes:
                raise ValueError(f"label factors {list(self.factors)} multiply to {math.prod(self.factors)}, "
                                 f"not num_classes={num_classes}")
            self.tables = nn.ModuleList(nn.Embedding(f, dim) for f in self.factors)
            self.null = nn.Parameter(torch.zeros(dim))
            for table in self.tables:
                nn.init.normal_(table.weight, std=1.0 / math.sqrt(len(self.factors)))
        else:
            self.table = nn.Embedding(num_classes + 1, dim)
            nn.init.normal_(self.table.weight, std=1.0)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        if labels.numel() and (int(labels.max()) > self.num_classes or int(labels.min()) < -1):
            raise ValueError(f"class labels must lie in [0, {self.num_classes}) (or -1 / {self.num_classes} for null), "
                             f"got range [{int(labels.min())}, {int(labels.max())}]")
        labels = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        if not self.factors:
            return self.table(labels)
        is_null = labels == self.num_classes
        rest = torch.where(is_null, torch.zeros_like(labels), labels)
        out = 0
        for size, table in zip(reversed(self.factors), reversed(self.tables)):  # least significant digit first
            out = out + table(rest % size)
            rest = rest // size
        return torch.where(is_null[:, None], self.null.to(out.dtype).expand_as(out), out)


class PooledContextEmbedding(nn.Module):
    """Mean of a conditioning sequence's real tokens -> a vector added to the noise-level embedding.

    (context (batch, tokens, context_dim), mask (batch, tokens) bool or None) -> (batch, dim).
    Imagen (Saharia et al. 2022, Sec. 2.2 / App. E) adds such a pooled text vector to the timestep
    embedding beside cross-attention, so a caption reaches every block's modulation, as a class label
    does. The projection starts at unit variance per output for LayerNorm-ed input, like
    ``LabelEmbedding``, so the caption is not drowned by the noise embedding.
    """

    def __init__(self, context_dim: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(context_dim)
        self.proj = nn.Linear(context_dim, dim)
        nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(context_dim))
        nn.init.zeros_(self.proj.bias)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if context.ndim != 3:
            raise ValueError(f"context must be (batch, tokens, dim), got {tuple(context.shape)}")
        if mask is None:
            pooled = context.mean(1)
        else:
            if mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask {tuple(mask.shape)} does not match context {tuple(context.shape[:2])}")
            weights = mask.to(context.dtype)[..., None]
            pooled = (context * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.proj(self.norm(pooled))

    @classmethod
    def if_enabled(cls, enabled: bool, context_dim: int | None, dim: int) -> PooledContextEmbedding | None:
        """A backbone's ``pooled_context`` option: the embedding when enabled (which needs the
        backbone's ``cross_attention_dim``), else None."""
        if not enabled:
            return None
        if not context_dim:
            raise ValueError("pooled_context needs cross_attention_dim (the width of cond['context'])")
        return cls(context_dim, dim)
