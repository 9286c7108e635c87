"""1D U-Net over raw waveforms (batch, channels, length), mono or stereo.

Design (after Ho et al. 2020 / Dhariwal & Nichol 2021, adapted to 1-D audio as in
Schneider et al. 2023, "Moûsai"):
  * strided-convolution down-sampling and transposed-convolution up-sampling with
    per-level factors, so length / prod(factors) tokens reach the coarsest level;
  * residual blocks with adaptive GroupNorm (FiLM) on the noise-level + class embedding;
  * self-attention (SDPA) only at the coarse levels listed in ``attention_levels``,
    optional cross-attention there to a conditioning sequence (batch, tokens, dim);
  * additive skip connections scaled by 1/sqrt(2) (Saharia et al. 2022, Imagen App. B);
  * ``extra_in_channels`` concatenated to the input for signal conditioning (e.g. a
    mask and the known audio for inpainting / continuation);
  * optional patching (``patch_size`` > 1): a strided input convolution and a transposed
    output convolution, so the first level already runs at length / patch_size
    (Hoogeboom et al. 2023, simple diffusion, Sec. 3.2) — the fast choice on CPUs; or, with
    ``patch_transform="mdct"``, a fixed orthogonal MDCT (multidiff.audio.mdct) whose
    ``patch_size`` frequency bands become the channels and whose overlap-add inverse rebuilds
    the waveform (smooth frame boundaries, no comb at sample_rate / patch_size);
  * ``input_gate`` (MDCT only): the output is A + G * X, with A and G predicted per band and
    frame and X the input's MDCT coefficients — a spectral mask, as speech enhancement
    networks predict, so the network can cancel the noise the preconditioning's skip term
    lets through (silence between words) with a gain instead of by copying the noise.
Any length divisible by patch_size * prod(factors) works at inference.

Conditioning mapping keys: ``label`` (batch,) long (-1 or num_classes = null; ``label_factors``
declares a product class such as pitch x instrument, see multidiff.nn.LabelEmbedding), ``context``
(batch, tokens, cross_attention_dim), ``context_mask`` (batch, tokens) bool,
``concat`` (batch, extra_in_channels, length). Missing keys mean "unconditional". With
``pooled_context`` the mean of the context's real tokens is also added to the noise-level
embedding (multidiff.nn.PooledContextEmbedding), as a label is.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from einops import rearrange
from torch import nn

from ..nn import Attention, FiLM
from ..nn.conditioning import ConditionedBackbone
from ..nn.modeling import SafetensorsModelMixin
from .mdct import imdct, mdct, mdct_basis


def _groups(channels: int, preferred: int = 32) -> int:
    g = math.gcd(channels, preferred)
    return max(g, 1)


class ResBlock1d(nn.Module):
    """GroupNorm-SiLU-Conv, FiLM from the embedding, GroupNorm-SiLU-Dropout-Conv (zero init), residual."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=pad)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.film = FiLM(emb_dim, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=pad)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = nn.functional.silu(self.film(self.norm2(h), emb))
        return self.skip(x) + self.conv2(self.dropout(h))


class AttentionBlock1d(nn.Module):
    """Pre-norm self-attention over positions, then optional cross-attention to a context.

    With ``emb_dim`` set, the embedding (noise level + class) is also projected to one extra
    key/value token every position can attend to ("conditioning token", as the class token
    of Peebles & Xie 2023, DiT's in-context conditioning), on top of FiLM in the res blocks.
    """

    def __init__(self, channels: int, heads: int, context_dim: int | None = None, backend: str = "auto",
                 emb_dim: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.self_attn = Attention(channels, heads, backend=backend)
        self.emb_token = nn.Linear(emb_dim, channels) if emb_dim else None
        self.cross_norm = nn.LayerNorm(channels) if context_dim else None
        self.cross_attn = Attention(channels, heads, context_dim=context_dim, backend=backend) if context_dim else None

    def forward(self, x: torch.Tensor, emb=None, context=None, context_mask=None) -> torch.Tensor:
        tokens = rearrange(self.norm(x), "b c l -> b l c")
        if self.emb_token is not None and emb is not None:
            keys = torch.cat([self.emb_token(emb).to(tokens.dtype)[:, None], tokens], dim=1)
            attended = self.self_attn(tokens, context=keys)
        else:
            attended = self.self_attn(tokens)
        h = rearrange(x, "b c l -> b l c") + attended
        if self.cross_attn is not None and context is not None:
            h = h + self.cross_attn(self.cross_norm(h), context=context.to(h.dtype), context_mask=context_mask)
        return rearrange(h, "b l c -> b c l")


class UNet1D(SafetensorsModelMixin, ConfigMixin, ConditionedBackbone):
    """Waveform U-Net: forward(x (batch, in_channels, length), noise_level (batch,), cond) -> (batch, out_channels, length).

    channels[i] is the width at level i; factors[i] down-samples level i to level i + 1
    (len(factors) == len(channels) - 1). ``attention_levels`` lists level indices that
    get attention blocks (the coarsest level always does when attention_heads > 0).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 1, out_channels: int | None = None,
                 channels: Sequence[int] = (32, 64, 128, 256), factors: Sequence[int] = (4, 4, 4),
                 blocks_per_level: int = 2, attention_levels: Sequence[int] = (3,), attention_heads: int = 4,
                 emb_dim: int = 256, num_classes: int = 0, cross_attention_dim: int | None = None,
                 extra_in_channels: int = 0, dropout: float = 0.0, kernel_size: int = 3,
                 attention_backend: str = "auto", skip_scale: float = 2 ** -0.5, patch_size: int = 1,
                 conditioning_token: bool = False, patch_transform: str = "conv",
                 label_factors: Sequence[int] | None = None, input_gate: bool = False,
                 pooled_context: bool = False):
        super().__init__()
        channels, factors = list(channels), list(factors)
        if len(factors) != len(channels) - 1:
            raise ValueError(f"UNet1D needs len(factors) == len(channels) - 1, got factors={factors}, channels={channels}")
        if any(f < 1 for f in factors):
            raise ValueError(f"down-sampling factors must be >= 1, got {factors}")
        self.out_ch = out_channels or in_channels
        self.gradient_checkpointing = False
        self.init_conditioning(emb_dim, num_classes, label_factors, cross_attention_dim, pooled_context)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if patch_transform not in ("conv", "mdct"):
            raise ValueError(f"patch_transform must be 'conv' or 'mdct', got {patch_transform!r}")
        self.mdct_hop = patch_size if patch_transform == "mdct" and patch_size > 1 else 0
        if self.mdct_hop:
            self.register_buffer("mdct_basis", mdct_basis(patch_size), persistent=False)
            self.in_conv = nn.Conv1d((in_channels + extra_in_channels) * patch_size, channels[0], 3, padding=1)
        elif patch_size == 1:
            self.in_conv = nn.Conv1d(in_channels + extra_in_channels, channels[0], 7, padding=3)
        else:  # patching (Hoogeboom et al. 2023, Sec. 3.2): the first level runs at length / patch_size
            self.in_conv = nn.Conv1d(in_channels + extra_in_channels, channels[0], patch_size, stride=patch_size)
        n_levels = len(channels)
        token_dim = emb_dim if conditioning_token else None
        attn = set(attention_levels) | ({n_levels - 1} if attention_heads > 0 else set())

        def make_blocks(ch_in, ch, level):
            blocks = nn.ModuleList()
            for b in range(blocks_per_level):
                blocks.append(ResBlock1d(ch_in if b == 0 else ch, ch, emb_dim, dropout, kernel_size))
                if level in attn and attention_heads > 0:
                    blocks.append(AttentionBlock1d(ch, attention_heads, cross_attention_dim, attention_backend, token_dim))
            return blocks

        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level in range(n_levels - 1):
            self.down_blocks.append(make_blocks(channels[level], channels[level], level))
            self.downsamplers.append(nn.Conv1d(channels[level], channels[level + 1], factors[level], stride=factors[level]))
        self.mid_blocks = nn.ModuleList([ResBlock1d(channels[-1], channels[-1], emb_dim, dropout, kernel_size)])
        if attention_heads > 0:
            self.mid_blocks.append(AttentionBlock1d(channels[-1], attention_heads, cross_attention_dim, attention_backend,
                                                    token_dim))
        self.mid_blocks.append(ResBlock1d(channels[-1], channels[-1], emb_dim, dropout, kernel_size))
        self.upsamplers = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(n_levels - 1)):
            self.upsamplers.append(nn.ConvTranspose1d(channels[level + 1], channels[level], factors[level], stride=factors[level]))
            self.up_blocks.append(make_blocks(channels[level], channels[level], level))
        self.out_norm = nn.GroupNorm(_groups(channels[0]), channels[0])
        if input_gate and not (self.mdct_hop and self.out_ch == in_channels):
            raise ValueError("input_gate needs patch_transform='mdct' (patch_size > 1) and out_channels == in_channels")
        if self.mdct_hop:  # with input_gate: (additive output, gain on the input's coefficients) per band
            self.out_conv = nn.Conv1d(channels[0], self.out_ch * patch_size * (2 if input_gate else 1), 3, padding=1)
        elif patch_size == 1:
            self.out_conv = nn.Conv1d(channels[0], self.out_ch, 3, padding=1)
        else:
            self.out_conv = nn.ConvTranspose1d(channels[0], self.out_ch, patch_size, stride=patch_size)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.total_factor = math.prod(factors) * patch_size

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
        cond = cond or {}
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet1D expects (batch, {self.config.in_channels}, length), got {tuple(x.shape)}")
        if x.shape[-1] % self.total_factor:
            raise ValueError(f"length {x.shape[-1]} is not divisible by the total down-sampling factor {self.total_factor}")
        emb = self.embed_conditions(x, noise_level, cond)                    # (b, emb_dim)
        context, context_mask = cond.get("context"), cond.get("context_mask")
        x = self.concat_channels(x, cond, self.config.extra_in_channels)     # (b, c + extra, length)
        if self.mdct_hop:  # (b, c, length) -> (b, c * bands, frames)
            x = rearrange(mdct(x, self.mdct_hop, self.mdct_basis), "b c k t -> b (c k) t")
        coeffs = x[:, :self.out_ch * self.mdct_hop] if self.config.input_gate else None
        h = self.in_conv(x)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamplers):
            for block in blocks:
                h = self.run(block, h, emb, context, context_mask)
            skips.append(h)
            h = down(h)
        for block in self.mid_blocks:
            h = self.run(block, h, emb, context, context_mask)
        for up, blocks in zip(self.upsamplers, self.up_blocks):
            h = (up(h) + skips.pop()) * self.config.skip_scale
            for block in blocks:
                h = self.run(block, h, emb, context, context_mask)
        out = self.out_conv(nn.functional.silu(self.out_norm(h)))
        if coeffs is not None:
            additive, gain = out.chunk(2, dim=1)
            out = additive + gain * coeffs
        if self.mdct_hop:
            out = imdct(rearrange(out, "b (c k) t -> b c k t", k=self.mdct_hop), self.mdct_hop, self.mdct_basis)
        return out


# ------------------------------------------------------------------------------ presets
def unet1d_tiny(**kw) -> UNet1D:
    """~0.5M parameters: tests and the CPU demo."""
    return UNet1D(**{"channels": (16, 32, 64, 128), "factors": (4, 4, 4), "blocks_per_level": 1,
                     "attention_levels": (3,), "emb_dim": 128, **kw})


def unet1d_small(**kw) -> UNet1D:
    """~4M parameters: spoken digits / notes on CPU in tens of minutes."""
    return UNet1D(**{"channels": (32, 64, 128, 256, 256), "factors": (4, 4, 4, 2), "blocks_per_level": 2,
                     "attention_levels": (3, 4), "emb_dim": 256, **kw})


def unet1d_base(**kw) -> UNet1D:
    """~30M parameters: GPU recipes."""
    return UNet1D(**{"channels": (64, 128, 256, 512, 512, 512), "factors": (4, 4, 4, 2, 2), "blocks_per_level": 2,
                     "attention_levels": (4, 5), "emb_dim": 512, "attention_heads": 8, **kw})


def unet1d_large(**kw) -> UNet1D:
    """~120M parameters."""
    return UNet1D(**{"channels": (128, 256, 512, 1024, 1024, 1024), "factors": (4, 4, 4, 2, 2),
                     "blocks_per_level": 2, "attention_levels": (3, 4, 5), "emb_dim": 1024, "attention_heads": 16, **kw})


UNET1D_PRESETS = {"tiny": unet1d_tiny, "small": unet1d_small, "base": unet1d_base, "large": unet1d_large}
