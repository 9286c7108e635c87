"""Attention with one dispatch point: torch SDPA by default, xformers where installed and on CUDA.

Memory never holds a (tokens x tokens) matrix on the SDPA flash / memory-efficient paths
or with xformers. Shapes: q (batch, heads, q_tokens, head_dim), k/v (batch, heads, kv_tokens, head_dim).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

BACKENDS = ("auto", "sdpa", "xformers", "math")
_XFORMERS = importlib.util.find_spec("xformers") is not None


def xformers_available() -> bool:
    return _XFORMERS and torch.cuda.is_available()


def attention(q, k, v, mask: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention. mask: bool (batch, kv_tokens), True = attend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {BACKENDS}")
    if backend == "xformers" and not xformers_available():
        raise ValueError("attention backend 'xformers' needs the xformers package and a CUDA device")
    if backend == "xformers":  # "auto" means SDPA: it picks flash / memory-efficient kernels itself
        import xformers.ops as xops

        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape[0], q.shape[1], q.shape[2], k.shape[2], device=q.device, dtype=q.dtype)
            bias = bias.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    attn_mask = None if mask is None else mask[:, None, None, :]
    if backend == "math":
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class Attention(nn.Module):
    """Multi-head self- or cross-attention on token sequences (batch, tokens, dim).

    With ``context_dim`` set it attends from x to ``context`` (batch, ctx_tokens, context_dim)
    (cross-attention, Rombach et al. 2022); otherwise to itself. QK-normalised with
    RMSNorm for stable training at low precision (Dehghani et al. 2023).
    """

    def __init__(self, dim: int, heads: int = 4, context_dim: int | None = None, backend: str = "auto",
                 qk_norm: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads, self.backend = heads, backend
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.q_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        src = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(src), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v, mask=context_mask if context is not None else None, backend=self.backend)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))
