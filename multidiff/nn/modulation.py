"""Conditioning by modulation: FiLM / adaptive GroupNorm for conv nets, adaLN-Zero for transformers."""
from __future__ import annotations

import torch
from torch import nn

from ..core.utils import append_dims


class FiLM(nn.Module):
    """Scale-and-shift from an embedding (Perez et al. 2018): h * (1 + scale) + shift.

    h: (batch, channels, ...); emb: (batch, emb_dim). The projection starts at zero so a
    new block is the identity modulation.
    """

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(emb).to(h.dtype).chunk(2, dim=1)
        return h * (1 + append_dims(scale, h.ndim)) + append_dims(shift, h.ndim)


class AdaLNZero(nn.Module):
    """adaLN-Zero (Peebles & Xie 2023, DiT Sec. 3.2): per-block shift, scale and gate from the
    embedding, zero-initialised so every residual block starts as the identity.

    forward(emb) -> (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each
    (batch, 1, dim) to broadcast over tokens.
    """

    def __init__(self, emb_dim: int, dim: int, n_chunks: int = 6):
        super().__init__()
        self.n_chunks = n_chunks
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, n_chunks * dim))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, emb: torch.Tensor):
        return tuple(c[:, None] for c in self.proj(emb).chunk(self.n_chunks, dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, for (batch, tokens, dim) with (batch, 1, dim) parameters."""
    return x * (1 + scale) + shift
