"""Circular MDCT: an orthogonal lapped transform between a waveform and frequency-band channels.

``mdct(x, hop)`` maps (..., length) to (..., hop, length / hop): ``hop`` frequency bands
(each sample_rate / (2 hop) wide) at a frame rate of sample_rate / hop. Frames are 2 * hop
long with a sine window and overlap by half (Princen & Bradley 1986, time-domain aliasing
cancellation); the signal is treated as periodic, so the transform is an orthogonal
matrix on R^length and ``imdct`` is both its inverse and its transpose.

Why a U-Net wants it: orthogonality means isotropic Gaussian noise stays isotropic Gaussian
and squared errors are equal in both domains, so a denoiser that runs its network in MDCT
space still diffuses and is trained on the raw waveform. Unlike plain patching (a permutation
of samples into channels), the channels are frequency bands, and the output is rebuilt by
overlapping windows instead of by per-patch transposed convolutions (no comb at the patch rate).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mdct_basis(hop: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(hop, 2 hop) analysis rows sqrt(2/hop) w[n] cos(pi/hop (n + 1/2 + hop/2)(k + 1/2)), w the sine window."""
    if hop < 1:
        raise ValueError(f"MDCT hop must be >= 1, got {hop}")
    n = torch.arange(2 * hop, dtype=torch.float64)
    k = torch.arange(hop, dtype=torch.float64)[:, None]
    window = torch.sin(math.pi * (n + 0.5) / (2 * hop))
    basis = math.sqrt(2.0 / hop) * window * torch.cos(math.pi / hop * (n + 0.5 + hop / 2) * (k + 0.5))
    return basis.to(dtype=dtype, device=device)


def mdct(x: torch.Tensor, hop: int, basis: torch.Tensor | None = None) -> torch.Tensor:
    """(..., length) -> (..., hop, length / hop); length must be a multiple of hop."""
    length = x.shape[-1]
    if length % hop:
        raise ValueError(f"MDCT: length {length} is not a multiple of the hop {hop}")
    basis = mdct_basis(hop, x.dtype, x.device) if basis is None else basis.to(x.dtype)
    lead = x.shape[:-1]
    flat = x.reshape(-1, 1, length)
    wrapped = torch.cat([flat, flat[..., :hop]], dim=-1)  # periodic extension: frame k covers [k hop, k hop + 2 hop)
    coeffs = F.conv1d(wrapped, basis[:, None, :], stride=hop)
    return coeffs.reshape(*lead, hop, length // hop)


def imdct(coeffs: torch.Tensor, hop: int | None = None, basis: torch.Tensor | None = None) -> torch.Tensor:
    """(..., hop, frames) -> (..., hop * frames): windowed overlap-add, the exact inverse of ``mdct``."""
    hop = coeffs.shape[-2] if hop is None else hop
    if coeffs.shape[-2] != hop:
        raise ValueError(f"IMDCT: expected {hop} bands in dim -2, got shape {tuple(coeffs.shape)}")
    basis = mdct_basis(hop, coeffs.dtype, coeffs.device) if basis is None else basis.to(coeffs.dtype)
    lead, frames = coeffs.shape[:-2], coeffs.shape[-1]
    y = F.conv_transpose1d(coeffs.reshape(-1, hop, frames), basis[:, None, :], stride=hop)  # length (frames + 1) hop
    length = frames * hop
    y = torch.cat([y[..., :hop] + y[..., length:], y[..., hop:length]], dim=-1)  # fold the wrapped tail back
    return y.reshape(*lead, length)
