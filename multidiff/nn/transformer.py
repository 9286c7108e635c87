"""Transformer layers shared by the backbones: DiT blocks (adaLN-Zero, Peebles & Xie 2023) and their final layer.

x: (batch, tokens, dim); emb: (batch, emb_dim), the conditioning vector of
:class:`multidiff.nn.conditioning.ConditionedBackbone`.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .modulation import AdaLNZero, modulate


class Mlp(nn.Module):
    """Linear-GELU-Dropout-Linear."""

    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (Peebles & Xie 2023, Fig. 3) with optional cross-attention.

    x: (batch, tokens, dim); emb: (batch, emb_dim). With ``kv_dim`` set the block attends
    from x to ``kv`` (batch, kv_tokens, kv_dim) instead of to itself (a modulated
    cross-attention block: the Perceiver read / write). With ``context_dim`` set a plain
    pre-norm cross-attention to ``context`` follows the (self-)attention (as in PixArt-alpha,
    Chen et al. 2023). Every residual branch starts at zero (the adaLN-Zero gates; the ungated
    cross-attention's output layer), so a fresh block is the identity.
    """

    def __init__(self, dim: int, heads: int, emb_dim: int, *, mlp_ratio: float = 4.0, kv_dim: int | None = None,
                 context_dim: int | None = None, dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.kv_norm = nn.LayerNorm(kv_dim, eps=1e-6) if kv_dim else None
        self.attn = Attention(dim, heads, context_dim=kv_dim, backend=backend)
        # The adaLN-Zero gate already starts this branch at zero. A zero output layer as well
        # (Attention's default) would leave both without gradient, each being the other's only
        # input, and the block dead forever; DiT zero-initialises the modulation only.
        self.attn.out.reset_parameters()
        self.cross_norm = nn.LayerNorm(dim, eps=1e-6) if context_dim else None
        self.cross_attn = Attention(dim, heads, context_dim=context_dim, backend=backend) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        self.ada = AdaLNZero(emb_dim, dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, kv: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (c.to(x.dtype) for c in self.ada(emb))
        h = modulate(self.norm1(x), shift1, scale1)
        if self.kv_norm is not None:
            h = self.attn(h, context=self.kv_norm(kv))
        else:
            h = self.attn(h)
        x = x + gate1 * h
        if self.cross_attn is not None and context is not None:
            x = x + self.cross_attn(self.cross_norm(x), context=context.to(x.dtype), context_mask=context_mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + zero-initialised linear (DiT's final layer)."""

    def __init__(self, dim: int, emb_dim: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = AdaLNZero(emb_dim, dim, n_chunks=2)
        self.linear = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (c.to(x.dtype) for c in self.ada(emb))
        return self.linear(modulate(self.norm(x), shift, scale))
