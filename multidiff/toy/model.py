"""A small MLP backbone for (batch, dim) points: the toy "modality" that exercises the trainer.

    h = W_in x + E_noise(noise_level) + E_label(label)
    h = h + MLP_i(LayerNorm(h))            (depth residual blocks)
    out = W_out SiLU(LayerNorm(h))         (W_out zero-initialised)

The noise-level embedding is sinusoidal with frequencies spread geometrically over
[1e-3, 10] cycles per unit, so it resolves both EDM's c_noise = ln(sigma)/4 (a few units
wide) and 0..1000 timesteps. Registered as ``toy_mlp`` in multidiff.train.registry.MODELS.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..train.registry import DataSpec, register_model


class NoiseEmbedding(nn.Module):
    """(batch,) noise levels -> (batch, dim) sinusoidal features -> MLP."""

    def __init__(self, dim: int, out_dim: int, min_freq: float = 1e-3, max_freq: float = 10.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half)) * 2 * math.pi
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class Block(nn.Module):
    def __init__(self, hidden: int, mult: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, mult * hidden), nn.Linear(mult * hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h))))


class ToyMLP(nn.Module):
    """Backbone ``model(x (batch, dim), noise_level (batch,), cond) -> (batch, dim)``.

    cond: None, or {"label": LongTensor (batch,)} with labels in [0, num_classes], where
    num_classes is the null label used for classifier-free guidance.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64, num_classes: int = 0,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.gradient_checkpointing = gradient_checkpointing
        self.inp = nn.Linear(dim, hidden)
        self.noise_emb = NoiseEmbedding(emb_dim, hidden)
        self.label_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any] | None = None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ToyMLP expects (batch, {self.dim}) points, got {tuple(x.shape)}")
        h = self.inp(x) + self.noise_emb(noise_level)
        if self.label_emb is not None:
            label = None if cond is None else cond.get("label")
            if label is None:
                label = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            h = h + self.label_emb(label.long())
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))


@dataclass
class ToyMLPParams:
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 64


def make_toy_mlp(params: ToyMLPParams, spec: DataSpec, *, gradient_checkpointing: bool = False) -> ToyMLP:
    if len(spec.sample_shape) != 1:
        raise ValueError(f"toy_mlp needs (dim,) samples, the data gives {spec.sample_shape}")
    return ToyMLP(spec.sample_shape[0], params.hidden, params.depth, params.emb_dim, spec.num_classes,
                  gradient_checkpointing)


register_model("toy_mlp", make_toy_mlp, params=ToyMLPParams, modality="toy2d", example_shape=(2,),
               example_batch=4096, description="residual MLP on (batch, dim) points")
